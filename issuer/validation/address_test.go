package validation

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestAddressPolicy(t *testing.T) {
	pfx := func(s ...string) []netip.Prefix {
		out, err := ParsePrefixes(s)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	prod := AddressPolicy{}
	dev := AddressPolicy{AllowLoopback: true}
	ops := AddressPolicy{Allow: pfx("127.0.0.1", "169.254.10.0/24", "10.1.0.0/16", "0.0.0.0/0"), Deny: pfx("10.0.0.0/8", "192.168.0.0/16")}
	for _, tc := range []struct {
		name string
		p    AddressPolicy
		ip   string
		ok   bool
	}{
		{"public", prod, "192.0.2.10", true},
		{"rfc1918 allowed by default", prod, "10.2.3.4", true},
		{"ula allowed by default", prod, "fd12::1", true},
		{"cgnat allowed by default", prod, "100.64.0.1", true},
		{"loopback v4", prod, "127.0.0.1", false},
		{"loopback other", prod, "127.0.0.2", false},
		{"loopback v6", prod, "::1", false},
		{"mapped loopback", prod, "::ffff:127.0.0.1", false},
		{"nat64 of metadata", prod, "64:ff9b::a9fe:a9fe", false},
		{"link-local v4", prod, "169.254.1.1", false},
		{"link-local v6", prod, "fe80::1", false},
		{"metadata", prod, "169.254.169.254", false},
		{"metadata ecs", prod, "169.254.170.2", false},
		{"metadata aws v6", prod, "fd00:ec2::254", false},
		{"metadata alibaba", prod, "100.100.100.200", false},
		{"unspecified", prod, "0.0.0.0", false},
		{"this network", prod, "0.1.2.3", false},
		{"unspecified v6", prod, "::", false},
		{"multicast", prod, "224.0.0.1", false},
		{"multicast v6", prod, "ff02::1", false},
		{"broadcast", prod, "255.255.255.255", false},
		{"dev loopback", dev, "127.0.0.1", true},
		{"dev still no link-local", dev, "169.254.1.1", false},
		{"dev still no metadata", dev, "169.254.169.254", false},
		{"operator allows one loopback", ops, "127.0.0.1", true},
		{"operator 0/0 beats built-in loopback", ops, "127.0.0.2", true},
		{"operator allows link-local range", ops, "169.254.10.5", true},
		{"operator never allows metadata", ops, "169.254.169.254", false},
		{"operator never allows multicast", ops, "224.0.0.1", false},
		{"deny 10/8", ops, "10.2.3.4", false},
		{"longer allow beats deny", ops, "10.1.2.3", true},
		{"deny 192.168", ops, "192.168.1.1", false},
		{"tie goes to deny", AddressPolicy{Allow: pfx("10.0.0.0/8"), Deny: pfx("10.0.0.0/8")}, "10.0.0.1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Check(netip.MustParseAddr(tc.ip))
			if tc.ok != (err == nil) {
				t.Fatalf("Check(%s) = %v, want ok=%v", tc.ip, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrAddressRefused) {
				t.Fatalf("error %v does not wrap ErrAddressRefused", err)
			}
		})
	}
	if _, err := ParsePrefixes([]string{"10.0.0.0/33"}); err == nil {
		t.Fatal("bad CIDR accepted")
	}
	if _, err := New(Config{AllowCIDRs: []string{"nope"}}); err == nil {
		t.Fatal("New accepted a bad allow entry")
	}
}

// TestDialerControlRefuses dials a literal loopback address through the
// policy's Control hook alone: the hook refuses before connecting, which is
// what stops a name from being rebound between resolution and the dial.
func TestDialerControlRefuses(t *testing.T) {
	var hits atomic.Int32
	l, port := listen(t)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			hits.Add(1)
			c.Close()
		}
	}()
	p := AddressPolicy{}
	d := net.Dialer{Control: p.control, Timeout: 2 * time.Second}
	if c, err := d.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil || !errors.Is(err, ErrAddressRefused) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial through the policy: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	if n := hits.Load(); n != 0 {
		t.Fatalf("the listener saw %d connections", n)
	}
}

// TestHTTP01SSRF replays finding #5 against the VA: a challenge server the
// policy allows (127.0.0.1, allowed explicitly) redirects to another
// loopback address that is not allowed, where a "metadata" service holds a
// secret, and to the cloud metadata address. Neither redirect is
// followed, the secret service sees no request, and no body reaches the
// error; a wrong answer reports only its length.
func TestHTTP01SSRF(t *testing.T) {
	const secret = "AKIAINTERNALSECRET-wJalrXUtnFEMI"
	var port int
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/acme-challenge/to-loopback", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.2:"+strconv.Itoa(port)+"/latest/meta-data/iam/security-credentials/role", http.StatusFound)
	})
	mux.HandleFunc("/.well-known/acme-challenge/to-name", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://internal.example.test:"+strconv.Itoa(port)+"/latest/meta-data/", http.StatusFound)
	})
	mux.HandleFunc("/.well-known/acme-challenge/to-metadata", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://169.254.169.254:"+strconv.Itoa(port)+"/latest/meta-data/", http.StatusFound)
	})
	mux.HandleFunc("/.well-known/acme-challenge/echo", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, secret)
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port = l.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })

	var secretHits atomic.Int32
	sl, err := net.Listen("tcp", "127.0.0.2:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("listen on 127.0.0.2 (the loopback target): %v", err)
	}
	ssrv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secretHits.Add(1)
		fmt.Fprint(w, secret)
	})}
	go func() { _ = ssrv.Serve(sl) }()
	t.Cleanup(func() { ssrv.Close() })

	// The attacker's name resolves to the allowed address; the internal
	// name to the refused one.
	lookup := func(_ context.Context, host string) ([]net.IP, error) {
		if host == "internal.example.test" {
			return []net.IP{net.ParseIP("127.0.0.2")}, nil
		}
		return []net.IP{net.ParseIP("127.0.0.1")}, nil
	}
	va, err := New(Config{HTTP01Port: port, LookupIP: lookup, Timeout: 5 * time.Second, AllowCIDRs: []string{"127.0.0.1/32"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		token, want, detail string
	}{
		{"to-loopback", "connection", "127.0.0.2 is loopback"},
		{"to-name", "connection", "127.0.0.2 is loopback"},
		{"to-metadata", "connection", "169.254.169.254 is a cloud metadata address"},
		{"echo", "incorrectResponse", fmt.Sprintf("(%d bytes received)", len(secret))},
	} {
		t.Run(tc.token, func(t *testing.T) {
			start := time.Now()
			err := va.Validate(t.Context(), Request{IdentifierType: IdentifierDNS, Value: "attacker.example.test", Challenge: HTTP01,
				Token: tc.token, KeyAuthorization: tc.token + ".thumb"})
			wantType(t, err, tc.want)
			var ve *Error
			errors.As(err, &ve)
			if d := ve.ProblemDetail(); strings.Contains(d, "AKIA") || strings.Contains(d, "wJalr") || !strings.Contains(d, tc.detail) {
				t.Fatalf("problem detail %q (want it to contain %q and no part of the body)", d, tc.detail)
			}
			if time.Since(start) > 3*time.Second {
				t.Fatalf("refusal took %v", time.Since(start))
			}
		})
	}
	if n := secretHits.Load(); n != 0 {
		t.Fatalf("the internal service was reached %d times", n)
	}

	// Without the explicit allow, production refuses the loopback name
	// itself; a dev VA reaches it.
	prodVA, _ := New(Config{HTTP01Port: port, LookupIP: lookup, Timeout: 5 * time.Second})
	err = prodVA.Validate(t.Context(), Request{IdentifierType: IdentifierDNS, Value: "a.example.test", Challenge: HTTP01, Token: "echo", KeyAuthorization: "echo.x"})
	wantType(t, err, "connection")
	if !strings.Contains(err.Error(), "no address of a.example.test may be used") {
		t.Fatalf("production VA on loopback: %v", err)
	}
	// tls-alpn-01 dials through the same policy.
	alpnVA, _ := New(Config{TLSALPN01Port: port, LookupIP: lookup, Timeout: 5 * time.Second})
	err = alpnVA.Validate(t.Context(), Request{IdentifierType: IdentifierIP, Value: "127.0.0.1", Challenge: TLSALPN01, Token: "t", KeyAuthorization: "t.x"})
	wantType(t, err, "connection")
	if !errors.Is(err, ErrAddressRefused) {
		t.Fatalf("tls-alpn-01 to loopback: %v", err)
	}
	for _, ip := range []string{"127.0.0.1", "169.254.169.254", "fe80::1", "224.0.0.1", "0.0.0.0"} {
		if prodVA.CheckAddress(net.ParseIP(ip)) == nil {
			t.Errorf("CheckAddress(%s) allowed in production", ip)
		}
	}
	if err := prodVA.CheckAddress(net.ParseIP("10.0.0.1")); err != nil {
		t.Errorf("CheckAddress(10.0.0.1): %v", err)
	}
}
