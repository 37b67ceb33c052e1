package bench

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseFields(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]string
		wantErr bool
	}{
		{"format=opaque ttl=30s max_ttl=1h", map[string]string{"format": "opaque", "ttl": "30s", "max_ttl": "1h"}, false},
		{"a=1,b=x=y  c=", map[string]string{"a": "1", "b": "x=y", "c": ""}, false},
		{"", map[string]string{}, false},
		{"ttl", nil, true},
		{"=v", nil, true},
	}
	for _, tc := range tests {
		got, err := ParseFields(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err %v", tc.in, err)
			continue
		}
		if !tc.wantErr && !maps.Equal(got, tc.want) {
			t.Errorf("%q: %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseCounter(t *testing.T) {
	const page = `# HELP sigil_leases_expired_total Leases revoked by the expiry worker.
# TYPE sigil_leases_expired_total counter
sigil_leases_expired_total_other 7
sigil_leases_expired_total{mount="x"} 9
sigil_leases_expired_total 1.234567e+06
`
	tests := []struct {
		name, page string
		want       int64
		wantErr    string
	}{
		{"float form", page, 1234567, ""},
		{"plain", "sigil_leases_expired_total 42\n", 42, ""},
		{"absent", "sigil_leases_minted_total 3\n", 0, "no sigil_leases_expired_total"},
		{"garbage", "sigil_leases_expired_total x\n", 0, "invalid syntax"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCounter(strings.NewReader(tc.page), expiredMetric)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("%d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

// rampCounter grows by step every tick from start on, like a server
// revoking leases at a steady rate.
type rampCounter struct {
	mu          sync.Mutex
	start       time.Time
	tick        time.Duration
	step, limit int64
	fail        error
}

func (r *rampCounter) read(context.Context) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return 0, r.fail
	}
	if time.Now().Before(r.start) {
		return 100, nil
	}
	n := int64(time.Since(r.start)/r.tick+1) * r.step
	return 100 + min(n, r.limit), nil
}
func (r *rampCounter) what() string            { return "ramp" }
func (r *rampCounter) interval() time.Duration { return 10 * time.Millisecond }

func TestWatchExpiry(t *testing.T) {
	ctx := context.Background()
	// 1,000 per 20 ms = 50,000/s, from 100 ms on.
	start := time.Now().Add(100 * time.Millisecond)
	c := &rampCounter{start: start, tick: 20 * time.Millisecond, step: 1000, limit: 20_000}
	var progress bytes.Buffer
	f, err := watchExpiry(ctx, c, 100, 20_000, start, time.Now().Add(10*time.Second), 0, &progress, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if f.Revoked != 20_000 || f.TimedOut || f.Interrupted {
		t.Fatalf("%+v", f)
	}
	// The ramp takes 380 ms; sampling and scheduling blur it.
	if f.Rate < 30_000 || f.Rate > 80_000 {
		t.Errorf("rate %.0f/s, want about 50,000/s", f.Rate)
	}
	if f.DueToDone < 300*time.Millisecond || f.DueToDone > 2*time.Second {
		t.Errorf("due to done %v", f.DueToDone)
	}
	if !strings.Contains(progress.String(), "of 20000 revoked") {
		t.Errorf("progress %q", progress.String())
	}

	// A counter that stops short times out with what it saw.
	c = &rampCounter{start: time.Now(), tick: 5 * time.Millisecond, step: 100, limit: 500}
	f, err = watchExpiry(ctx, c, 100, 1000, time.Now(), time.Now().Add(200*time.Millisecond), 0, nil, 0)
	if err != nil || !f.TimedOut || f.Revoked != 500 {
		t.Fatalf("short counter: %+v, %v", f, err)
	}

	// Ctrl-C returns what was measured so far.
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	c = &rampCounter{start: time.Now().Add(time.Hour), tick: time.Millisecond, step: 1, limit: 1}
	f, err = watchExpiry(cctx, c, 100, 10, time.Now(), time.Now().Add(time.Hour), 0, nil, 0)
	if err != nil || !f.Interrupted || f.Revoked != 0 {
		t.Fatalf("interrupted: %+v, %v", f, err)
	}

	c = &rampCounter{fail: context.DeadlineExceeded}
	if _, err := watchExpiry(ctx, c, 0, 10, time.Now(), time.Now().Add(time.Second), 0, nil, 0); err == nil {
		t.Fatal("a failing counter was not reported")
	}
}

func TestLeasesTargets(t *testing.T) {
	good := func() *LeasesReport {
		return &LeasesReport{Source: LeaseSourceCreds, Engine: "tokens engine at t, role r", Leases: 1_000_000, Clients: 16,
			Expiry:  &ExpiryFigures{Leases: 1_000_000, Revoked: 1_000_000, Rate: 7000, Elapsed: 143 * time.Second},
			Restart: &RestartFigures{ActiveLeases: 1_000_000, ToReady: 300 * time.Millisecond, RSSReady: 80 << 20, RSSSettled: 90 << 20}}
	}
	tests := []struct {
		name   string
		mod    func(r *LeasesReport)
		engine string
		want   []string // Met of expiry, ready, RSS
	}{
		{"all met", nil, "tokens", []string{"met", "met", "met"}},
		{"slow expiry", func(r *LeasesReport) { r.Expiry.Rate = 4000 }, "tokens", []string{"not met", "met", "met"}},
		{"timed out", func(r *LeasesReport) { r.Expiry.TimedOut = true }, "tokens", []string{"not met", "met", "met"}},
		{"slow start, big", func(r *LeasesReport) { r.Restart.ToReady = 3 * time.Second; r.Restart.RSSSettled = 400 << 20 }, "tokens", []string{"met", "not met", "not met"}},
		{"other engine", nil, "postgres", []string{"not applicable", "met", "met"}},
		{"api tokens", func(r *LeasesReport) { r.Source = LeaseSourceAPITokens }, "tokens", []string{"not applicable", "met", "met"}},
		{"fewer leases", func(r *LeasesReport) { r.Leases = 20_000 }, "tokens", []string{"met (measured with 20000", "met (measured", "met (measured"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := good()
			if tc.mod != nil {
				tc.mod(r)
			}
			r.checkTargets(tc.engine)
			if len(r.Targets) != 3 {
				t.Fatalf("targets %+v", r.Targets)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(r.Targets[i].Met, w) {
					t.Errorf("%s: %q, want %q…", r.Targets[i].Target, r.Targets[i].Met, w)
				}
			}
			var out bytes.Buffer
			if err := r.writeTable(&out); err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"expiry", "restart", "1000000 active leases", "target"} {
				if !strings.Contains(out.String(), s) {
					t.Errorf("table lacks %q:\n%s", s, out.String())
				}
			}
		})
	}
	// Without a restart only the expiry target is marked.
	r := good()
	r.Restart = nil
	r.checkTargets("tokens")
	if len(r.Targets) != 1 {
		t.Fatalf("%+v", r.Targets)
	}
}

func TestTransitCeiling(t *testing.T) {
	for _, n := range []int{1, 2} {
		c, err := TransitCeiling(context.Background(), n, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if c.Goroutines != n || c.Ops == 0 || c.Rate <= 0 || c.PerOp <= 0 || !strings.Contains(c.Name, "AES-256-GCM") {
			t.Fatalf("%+v", c)
		}
	}
}

// TestPostgresRoleCeiling starts a throwaway PostgreSQL (failing, not
// skipping, when its binaries are missing) and measures the raw ceiling,
// which must leave no role behind.
func TestPostgresRoleCeiling(t *testing.T) {
	ctx := context.Background()
	pg, err := StartPostgres(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	dsn := pg.DSN("postgres")
	c, err := PostgresRoleCeiling(ctx, dsn, 2, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if c.Ops == 0 || c.Rate <= 0 || c.Goroutines != 2 {
		t.Fatalf("%+v", c)
	}
	left, err := CountRoles(ctx, dsn, "bench_raw_")
	if err != nil || left != 0 {
		t.Fatalf("%d raw roles left, %v", left, err)
	}
	wrong := fmt.Sprintf("postgres://postgres:wrong@127.0.0.1:%d/postgres?sslmode=disable", pg.Port())
	if _, err := PostgresRoleCeiling(ctx, wrong, 1, 50*time.Millisecond); err == nil {
		t.Fatal("a wrong password measured a ceiling")
	}
}
