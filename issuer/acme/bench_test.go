package acme

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/log"
	"github.com/go-acme/lego/v4/registration"

	"github.com/sigil-ca/sigil/issuer/validation"
)

// sharedHTTP01 is one http-01 responder for many lego clients (lego's own
// provider server binds a port per client; the VA dials one port).
type sharedHTTP01 struct {
	mu     sync.Mutex
	tokens map[string]string
}

func (s *sharedHTTP01) Present(_, token, keyAuth string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = keyAuth
	return nil
}

func (s *sharedHTTP01) CleanUp(_, token, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, token)
	return nil
}

func (s *sharedHTTP01) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok := strings.TrimPrefix(r.URL.Path, "/.well-known/acme-challenge/")
	s.mu.Lock()
	ka, ok := s.tokens[tok]
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	_, _ = w.Write([]byte(ka))
}

// BenchmarkLegoHTTP01 runs concurrent lego clients (-cpu sets how many:
// GOMAXPROCS × SetParallelism(4)) through full enrollments: new order for
// two fresh names, two http-01 validations, finalize, download. It reports
// enrollments/s and p50/p99 latency. Run:
//
//	go test ./issuer/acme -run '^$' -bench LegoHTTP01 -benchtime 200x
func BenchmarkLegoHTTP01(b *testing.B) {
	for _, wait := range []time.Duration{0, 500 * time.Millisecond} {
		b.Run("wait="+wait.String(), func(b *testing.B) { benchLego(b, wait) })
	}
}

func benchLego(b *testing.B, wait time.Duration) {
	log.Logger = discardLogger()
	responder := &sharedHTTP01{tokens: map[string]string{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: responder, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(l) }()
	b.Cleanup(func() { hs.Close() })
	va, err := validation.New(validation.Config{HTTP01Port: l.Addr().(*net.TCPAddr).Port, AllowLoopback: true,
		LookupIP: func(context.Context, string) ([]net.IP, error) { return []net.IP{net.IPv4(127, 0, 0, 1)}, nil }})
	if err != nil {
		b.Fatal(err)
	}
	e := newEnv(b, va, func(c *Config) {
		c.Provisioners[0].MaxPendingOrders = 100000
		c.ValidationWait = wait
	})
	var (
		mu   sync.Mutex
		lats []time.Duration
		seq  atomic.Int64
	)
	b.SetParallelism(4)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		user := &legoUser{key: key}
		cfg := lego.NewConfig(user)
		cfg.CADirURL = e.base + "/directory"
		cfg.HTTPClient = e.ts.Client()
		cfg.Certificate.KeyType = certcrypto.EC256
		client, err := lego.NewClient(cfg)
		if err != nil {
			b.Error(err)
			return
		}
		if err := client.Challenge.SetHTTP01Provider(responder); err != nil {
			b.Error(err)
			return
		}
		if user.reg, err = client.Registration.Register(registration.RegisterOptions{TermsOfServiceAgreed: true}); err != nil {
			b.Error(err)
			return
		}
		for pb.Next() {
			n := seq.Add(1)
			names := []string{fmt.Sprintf("h%d.example.test", n), fmt.Sprintf("i%d.example.test", n)}
			t0 := time.Now()
			if _, err := client.Certificate.Obtain(certificate.ObtainRequest{Domains: names, Bundle: true}); err != nil {
				b.Error(err)
				return
			}
			d := time.Since(t0)
			mu.Lock()
			lats = append(lats, d)
			mu.Unlock()
		}
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if len(lats) == 0 {
		return
	}
	slices.Sort(lats)
	pct := func(p float64) time.Duration { return lats[min(len(lats)-1, int(p*float64(len(lats))))] }
	b.ReportMetric(float64(len(lats))/elapsed.Seconds(), "enrollments/s")
	b.ReportMetric(float64(pct(0.50).Milliseconds()), "p50-ms")
	b.ReportMetric(float64(pct(0.99).Milliseconds()), "p99-ms")
	b.Logf("%d enrollments by %s clients in %v", len(lats), strconv.Itoa(4*runtimeProcs()), elapsed)
}

func discardLogger() *stdlog.Logger { return stdlog.New(io.Discard, "", 0) }

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
