package main

import (
	"context"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
)

// notPerformedHeader is the server's mark on an Unavailable answer given
// before the call ran (server.NotPerformedHeader): retrying it is safe even
// for a call that is not idempotent.
const notPerformedHeader = "x-sigil-not-performed"

// notPerformedMessage begins the message of the same refusal from the
// server's early gate, which can send no headers
// (cluster.ErrStorageUnavailable).
const notPerformedMessage = "storage unreachable: this node refuses calls"

// normalizeAddrs splits a comma-separated list of node addresses (the
// nodes of one cluster) and normalises each; see normalizeAddr.
func normalizeAddrs(list, from string) ([]string, error) {
	var out []string
	for a := range strings.SplitSeq(list, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		n, err := normalizeAddr(a, from)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, usagef("%s %q names no address", from, list)
	}
	return out, nil
}

// clusterTarget returns a target over a fixed list of node addresses with
// round-robin balancing: a node that goes away leaves the ready set, so
// later calls (and retries) go to the others. Each address keeps its own
// host name for TLS verification.
func clusterTarget(addrs []string, opts []grpc.DialOption) (string, []grpc.DialOption) {
	r := manual.NewBuilderWithScheme("sigil-nodes")
	st := resolver.State{}
	for _, a := range addrs {
		host, _, _ := net.SplitHostPort(a)
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a, ServerName: host})
	}
	r.InitialState(st)
	opts = append(opts, grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	return r.Scheme() + ":///nodes", opts
}

// idempotentVerbs begin the names of methods that change nothing (or whose
// repetition changes nothing more), so a call that failed as Unavailable
// may be repeated on another node whether or not it had run.
var idempotentVerbs = []string{"Get", "List", "Lookup", "Read", "Status", "Members", "Verify", "Hash", "Introspect", "Test"}

// idempotent reports whether fullMethod (/pkg.Service/Method) may be
// retried after an Unavailable that might have come after it ran.
func idempotent(fullMethod string) bool {
	m := fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
	for _, v := range idempotentVerbs {
		if strings.HasPrefix(m, v) {
			return true
		}
	}
	return false
}

// Retry bounds: attempts in all, and the backoff between them (doubling).
const (
	retryAttempts = 6
	retryBackoff  = 100 * time.Millisecond
	retryMaxWait  = 2 * time.Second
)

// retryInterceptor repeats a call that failed with Unavailable, while the
// caller's deadline allows, when that is safe: the method is idempotent,
// or the server said it did not run the call (a node cut off from its
// database), or the call never reached a server. A non-idempotent call
// that a node may have run before it died is not repeated: the caller
// sees the error and decides.
func retryInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	wait := retryBackoff
	for attempt := 1; ; attempt++ {
		var header metadata.MD
		err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Header(&header))...)
		if err == nil || attempt >= retryAttempts || status.Code(err) != codes.Unavailable {
			return err
		}
		notPerformed := len(header.Get(notPerformedHeader)) > 0 ||
			strings.HasPrefix(status.Convert(err).Message(), notPerformedMessage)
		// Without a response header the call never reached a handler: the
		// connection was refused or broke before the server answered. A
		// kill mid-call also ends without headers, so only idempotent
		// calls are retried then.
		if !idempotent(method) && !notPerformed {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, retryMaxWait)
	}
}
