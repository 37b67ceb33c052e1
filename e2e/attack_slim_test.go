package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// slimHold opens n health watches on a new connection, each holding one of
// the server's unauthenticated-call slots until ctx ends, and returns how
// many the server admitted and the first refusal.
func slimHold(t *testing.T, ctx context.Context, d *devServer, n int) (admitted int, refused error) {
	t.Helper()
	health := healthpb.NewHealthClient(grpcAttackConn(t, d, nil, ""))
	for range n {
		w, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = w.Recv()
		}
		if err != nil {
			if refused == nil {
				refused = err
			}
			continue
		}
		admitted++
	}
	return admitted, refused
}

// TestAttackSlimUnauthenticatedCallsServerWide: public methods (health,
// status, init, unseal, enroll, unwrap) are read before anyone is
// authenticated, each with a body up to the server-wide 5 MiB limit. A
// per-connection limit alone let an attacker with many connections make
// the server read (and hold) any number of such bodies at once. The bound
// is server-wide now: once 16 unauthenticated calls are in flight, more are
// refused at once, before their bodies are read, with ResourceExhausted
// naming the server-wide limit, and a slot comes back when a call ends.
// On the code before the bound, every watch below was admitted and the
// extra Status call succeeded.
func TestAttackSlimUnauthenticatedCallsServerWide(t *testing.T) {
	d := startDev(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	holdCtx, release := context.WithCancel(ctx)
	defer release()

	// Four connections of six calls each stay within the per-connection
	// limit (8): only a server-wide bound refuses any of them.
	admitted := 0
	var refused error
	for range 4 {
		n, err := slimHold(t, holdCtx, d, 6)
		admitted += n
		if refused == nil {
			refused = err
		}
	}
	if admitted != 16 {
		t.Fatalf("%d of 24 unauthenticated calls on 4 connections were admitted at once, want 16 (the server-wide bound)", admitted)
	}
	if status.Code(refused) != codes.ResourceExhausted || !strings.Contains(status.Convert(refused).Message(), "on this server") {
		t.Fatalf("refusal = %v, want ResourceExhausted naming the server-wide limit", refused)
	}

	// A fresh connection's public call is refused promptly, with a 5 MiB
	// body that is never read.
	sys := sigilv1.NewSysServiceClient(grpcAttackConn(t, d, nil, ""))
	start := time.Now()
	_, err := sys.Unseal(ctx, &sigilv1.UnsealRequest{Share: strings.Repeat("s", 4<<20)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "on this server") {
		t.Fatalf("unseal with a 4 MiB body while the server is full = %v, want ResourceExhausted", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("refusal took %v, want it prompt", took)
	}

	// Authenticated calls are not held up by the unauthenticated ones.
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
