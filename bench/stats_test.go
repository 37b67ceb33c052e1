package bench

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func ds(ms ...int) []time.Duration {
	out := make([]time.Duration, len(ms))
	for i, m := range ms {
		out[i] = time.Duration(m) * time.Millisecond
	}
	return out
}

func TestPercentileNearestRank(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	cases := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ds(7), 99, 7 * time.Millisecond},
		{"p50 of 1..100", hundred, 50, 50 * time.Millisecond},
		{"p90 of 1..100", hundred, 90, 90 * time.Millisecond},
		{"p99 of 1..100", hundred, 99, 99 * time.Millisecond},
		{"p100 is max", hundred, 100, 100 * time.Millisecond},
		{"p0 is min", hundred, 0, time.Millisecond},
		{"p50 of 4 takes the 2nd", ds(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p51 of 4 takes the 3rd", ds(1, 2, 3, 4), 51, 3 * time.Millisecond},
		{"p99 of 10 is the max", ds(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
		{"p90 of 10", ds(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, 9 * time.Millisecond},
	}
	for _, c := range cases {
		if got := Percentile(c.sorted, c.p); got != c.want {
			t.Errorf("%s: Percentile(p%v) = %v, want %v", c.name, c.p, got, c.want)
		}
	}
}

func TestSummarizeSortsAndAverages(t *testing.T) {
	l := Summarize(ds(9, 1, 5, 3, 7))
	want := Latency{Mean: 5 * time.Millisecond, P50: 5 * time.Millisecond, P90: 9 * time.Millisecond,
		P99: 9 * time.Millisecond, Max: 9 * time.Millisecond}
	if l != want {
		t.Fatalf("got %+v, want %+v", l, want)
	}
	if (Summarize(nil) != Latency{}) {
		t.Fatal("empty summary not zero")
	}
}

func TestRate(t *testing.T) {
	if r := Rate(500, 2*time.Second); r != 250 {
		t.Fatalf("Rate = %v", r)
	}
	if Rate(5, 0) != 0 {
		t.Fatal("rate over zero time")
	}
}

func TestParseStatCPU(t *testing.T) {
	// Field 2 may hold spaces and parentheses.
	line := []byte("1234 (sigil (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 1000 100 0\n")
	got, err := parseStatCPU(line)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3 * time.Second; got != want { // (250+50) ticks at 100 Hz
		t.Fatalf("cpu = %v, want %v", got, want)
	}
	if _, err := parseStatCPU([]byte("garbage")); err == nil {
		t.Fatal("garbage parsed")
	}
}

func TestStatusKB(t *testing.T) {
	st := []byte("Name:\tsigil\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\n")
	if got := statusKB(st, "VmRSS:"); got != 1024*1024 {
		t.Fatalf("VmRSS = %d", got)
	}
	if got := statusKB(st, "VmHWM:"); got != 2048*1024 {
		t.Fatalf("VmHWM = %d", got)
	}
}

func TestReadProcSelf(t *testing.T) {
	s, err := ReadProc(pidSelf())
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	if s.RSS <= 0 || s.PeakRSS < s.RSS {
		t.Fatalf("rss %d peak %d", s.RSS, s.PeakRSS)
	}
}

type fakeScenario struct {
	calls atomic.Int64
	fail  int64 // every fail-th call fails
	sleep time.Duration
}

func (f *fakeScenario) Name() string   { return "fake" }
func (f *fakeScenario) Target() string { return "test" }
func (f *fakeScenario) Close() error   { return nil }
func (f *fakeScenario) Do(ctx context.Context, _ int) error {
	n := f.calls.Add(1)
	if f.sleep > 0 {
		select {
		case <-time.After(f.sleep):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if f.fail > 0 && n%f.fail == 0 {
		return errors.New("boom")
	}
	return nil
}

func TestRunCountAndErrors(t *testing.T) {
	sc := &fakeScenario{fail: 4}
	res, err := Run(context.Background(), sc, Options{Concurrency: 3, Count: 100})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK+res.Errors != 100 || res.Errors != 25 {
		t.Fatalf("ok %d errors %d", res.OK, res.Errors)
	}
	if len(res.FirstErrors) != maxFirstErrors {
		t.Fatalf("%d first errors kept", len(res.FirstErrors))
	}
}

func TestRunInterruptedKeepsMeasurements(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	res, err := Run(ctx, &fakeScenario{sleep: 5 * time.Millisecond}, Options{Concurrency: 2, Duration: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Interrupted || res.OK == 0 || res.Errors != 0 {
		t.Fatalf("interrupted %v ok %d errors %d", res.Interrupted, res.OK, res.Errors)
	}
	if res.Latency.P50 < 5*time.Millisecond {
		t.Fatalf("p50 %v below the scenario's sleep", res.Latency.P50)
	}
}

func TestRunOptionsValidated(t *testing.T) {
	for _, o := range []Options{{Concurrency: 0, Count: 1}, {Concurrency: 1}, {Concurrency: 1, Count: -1}} {
		if _, err := Run(context.Background(), &fakeScenario{}, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

func TestParsePKCS11URI(t *testing.T) {
	u, err := ParsePKCS11URI("pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=sigil%20ca?pin-value=123456")
	if err != nil {
		t.Fatal(err)
	}
	if u.Module != "/usr/lib/softhsm/libsofthsm2.so" || u.Token != "sigil ca" || u.PIN != "123456" {
		t.Fatalf("%+v", u)
	}
	if _, err := ParsePKCS11URI("pkcs11:token=x"); err == nil {
		t.Fatal("URI without module accepted")
	}
}

func TestOverPastDeadlineBeforeTimerFires(t *testing.T) {
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if !over(ctx) {
		t.Fatal("past deadline not over")
	}
	if over(context.Background()) {
		t.Fatal("background over")
	}
}
