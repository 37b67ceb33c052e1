package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// slimHold starts n calls of the unary public method on conn that send
// their headers and never their body, as a slow or hostile client does:
// each admitted one holds an unauthenticated-call slot until ctx ends (or
// the server's publicCallTimeout). It returns how many the server admitted
// (still waiting for a body after a moment) and the first refusal.
func slimHold(t *testing.T, ctx context.Context, conn *grpc.ClientConn, method string, n int) (admitted int, refused error) {
	t.Helper()
	type outcome struct{ err error }
	results := make(chan outcome, n)
	for range n {
		st, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, method)
		if err != nil {
			results <- outcome{err}
			continue
		}
		go func() {
			// A refused call ends at once; an admitted one waits for the
			// body that never comes.
			var m sigilv1.StatusResponse
			results <- outcome{st.RecvMsg(&m)}
		}()
	}
	deadline := time.After(time.Second)
	for done := 0; done < n; {
		select {
		case r := <-results:
			done++
			if refused == nil {
				refused = r.err
			}
		case <-deadline:
			return n - done, refused
		}
	}
	return 0, refused
}

// TestAttackSlimUnauthenticatedCallsServerWide: public methods (status,
// init, unseal, enroll, unwrap, logins) are read before anyone is
// authenticated, each with a body up to the server-wide 5 MiB limit. A
// per-connection limit alone let an attacker with many connections make
// the server read (and hold) any number of such bodies at once. The bound
// is server-wide: once 16 unauthenticated calls are in flight, more are
// refused at once, before their bodies are read, with ResourceExhausted
// naming the server-wide limit, and a slot comes back when a call ends.
// One address holds at most 4 of them, however many connections it opens:
// before that bound, one client with two connections held all 16 and
// locked everyone out of unseal and logins. Health checks have slots of
// their own, so a load balancer keeps seeing the node.
func TestAttackSlimUnauthenticatedCallsServerWide(t *testing.T) {
	d := startDev(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	holdCtx, release := context.WithCancel(ctx)
	defer release()
	status4 := sigilv1.SysService_Status_FullMethodName

	// One address, four connections of three calls each: only four are
	// held, and the refusal names the address's bound.
	admitted := 0
	var refused error
	for range 4 {
		n, err := slimHold(t, holdCtx, grpcAttackConnFrom(t, d, "127.0.0.2", nil, ""), status4, 3)
		admitted += n
		if refused == nil {
			refused = err
		}
	}
	if admitted != 4 || status.Code(refused) != codes.ResourceExhausted || !strings.Contains(status.Convert(refused).Message(), "from this address") {
		t.Fatalf("one address held %d calls (refusal %v), want 4 and ResourceExhausted naming the address bound", admitted, refused)
	}
	// Another address is not locked out by it.
	sys := sigilv1.NewSysServiceClient(grpcAttackConnFrom(t, d, "127.0.0.3", nil, ""))
	if _, err := sys.Status(ctx, &sigilv1.StatusRequest{}); err != nil {
		t.Fatalf("Status from another address while one holds its share: %v", err)
	}

	// Three more addresses fill the server (4 × 4 = 16).
	for _, src := range []string{"127.0.0.4", "127.0.0.5", "127.0.0.6"} {
		n, _ := slimHold(t, holdCtx, grpcAttackConnFrom(t, d, src, nil, ""), status4, 4)
		admitted += n
	}
	if admitted != 16 {
		t.Fatalf("%d unauthenticated calls held from four addresses, want 16 (the server-wide bound)", admitted)
	}

	// A fresh address's public call is refused promptly, with a 5 MiB body
	// that is never read.
	start := time.Now()
	_, err := sys.Unseal(ctx, &sigilv1.UnsealRequest{Share: strings.Repeat("s", 4<<20)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "on this server") {
		t.Fatalf("unseal with a 4 MiB body while the server is full = %v, want ResourceExhausted", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("refusal took %v, want it prompt", took)
	}

	// Health checks and authenticated calls are not held up by them.
	if _, err := healthpb.NewHealthClient(grpcAttackConnFrom(t, d, "127.0.0.7", nil, "")).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("a health check while the unauthenticated slots are full: %v", err)
	}
	authed := sigilv1.NewCAServiceClient(grpcAttackConn(t, d, nil, d.exports["SIGIL_TOKEN"]))
	if _, err := authed.GetRoot(ctx, &sigilv1.GetRootRequest{}); err != nil {
		t.Fatalf("an authenticated call while the unauthenticated slots are full: %v", err)
	}

	// Slots come back when calls end.
	release()
	waitFor(t, 10*time.Second, "public slots freed", func() bool {
		_, err := sys.Status(ctx, &sigilv1.StatusRequest{})
		return err == nil
	})
}

// TestAttackSlimPublicRequestSizes: public methods have small per-method
// limits of their own instead of the 64 KiB default, so an oversized body
// is refused naming the method's limit.
func TestAttackSlimPublicRequestSizes(t *testing.T) {
	d := startDev(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := grpcAttackConn(t, d, nil, "")
	sys := sigilv1.NewSysServiceClient(conn)
	wrap := sigilv1.NewWrapServiceClient(conn)
	big := strings.Repeat("x", 32<<10) // under the old 64 KiB default
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"unseal", func() error { _, err := sys.Unseal(ctx, &sigilv1.UnsealRequest{Share: big}); return err }, "4 KiB limit"},
		{"unwrap", func() error { _, err := wrap.Unwrap(ctx, &sigilv1.UnwrapRequest{Token: big}); return err }, "16 KiB limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), tt.want) {
				t.Fatalf("%s with a 32 KiB body = %v, want ResourceExhausted naming the %s", tt.name, err, tt.want)
			}
		})
	}
}
