package validation

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestSystemResolver: with DNSResolver "system", http-01 finds the host
// through the system resolver, /etc/hosts included ("localhost" is in it
// on every supported system and in no DNS zone a direct query would ask).
func TestSystemResolver(t *testing.T) {
	const token, keyAuth = "systok", "systok.thumb"
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/acme-challenge/"+token, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, keyAuth)
	})
	port := serveHTTP(t, mux)
	va, err := New(Config{HTTP01Port: port, DNSResolver: SystemResolver, Timeout: 5 * time.Second, AllowLoopback: true})
	if err != nil {
		t.Fatalf("DNSResolver %q refused: %v", SystemResolver, err)
	}
	for _, tc := range []struct {
		host string
		ok   bool
	}{
		{"localhost", true},
		{"no-such-host.invalid", false}, // RFC 6761: never resolves
	} {
		err := va.Validate(t.Context(), Request{IdentifierType: IdentifierDNS, Value: tc.host, Challenge: HTTP01,
			Token: token, KeyAuthorization: keyAuth})
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok %v", tc.host, err, tc.ok)
		}
	}
	if _, err := New(Config{DNSResolver: "not-a-resolver"}); err == nil {
		t.Error("a resolver that is neither HOST:PORT nor system was accepted")
	}
}
