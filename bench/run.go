package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Scenario is one kind of work a client repeats. Do performs one operation
// (one certificate, one credential, …) for the given worker and returns
// when the server has answered; it must be safe to call from Concurrency
// goroutines at once, each with its own worker number.
type Scenario interface {
	// Name is the scenario's name as given to --scenario.
	Name() string
	// Target names what the scenario talks to ("sigil", "step-ca").
	Target() string
	Do(ctx context.Context, worker int) error
	Close() error
}

// Scenarios are every scenario the issue plans; Implemented says which the
// harness can run today.
func Scenarios() []string {
	return []string{"sign", "acme", "creds-postgres", "tokens", "transit-encrypt", "leases", "kv"}
}

// Implemented reports whether a scenario can be run.
func Implemented(name string) bool {
	return slices.Contains(Scenarios(), name)
}

// ErrNotImplemented is returned for a planned scenario that the harness
// does not run yet.
var ErrNotImplemented = errors.New("scenario not implemented yet")

// Options bound a run.
type Options struct {
	Concurrency int           // concurrent clients, at least 1
	Duration    time.Duration // stop after this long (0: no time bound)
	Count       int           // stop after this many operations (0: no count bound)
	Warmup      time.Duration // unmeasured operations before the run
	// Progress, when set, receives a progress line every ProgressEvery.
	Progress      io.Writer
	ProgressEvery time.Duration
	// ServerPID, when non-zero, is sampled from /proc before and after.
	ServerPID int
}

func (o Options) validate() error {
	switch {
	case o.Concurrency < 1:
		return fmt.Errorf("concurrency %d: must be at least 1", o.Concurrency)
	case o.Duration < 0 || o.Count < 0:
		return errors.New("duration and count must not be negative")
	case o.Duration == 0 && o.Count == 0:
		return errors.New("give a duration or a count")
	}
	return nil
}

// Result is what one run measured.
type Result struct {
	Scenario    string        `json:"scenario"`
	Target      string        `json:"target"`
	Concurrency int           `json:"concurrency"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	OK          int           `json:"ok"`
	Errors      int           `json:"errors"`
	FirstErrors []string      `json:"first_errors,omitempty"`
	Throughput  float64       `json:"throughput_per_s"`
	Latency     Latency       `json:"latency"`
	Interrupted bool          `json:"interrupted,omitempty"`
	// Server is the server process's resource use over the run, when a
	// PID was given.
	Server *ProcUsage `json:"server,omitempty"`
	// Ceiling is the in-process limit this scenario is compared with.
	Ceiling *Ceiling `json:"ceiling,omitempty"`
	// OfCeiling is Throughput / Ceiling.Rate.
	OfCeiling float64 `json:"of_ceiling,omitempty"`
	// CPUOfCeiling is Ceiling.PerOp / Server.CPUPerOp: the server's CPU
	// efficiency against the ceiling's, which a busy shared machine
	// distorts less than throughput.
	CPUOfCeiling float64 `json:"cpu_of_ceiling,omitempty"`
	// LoadAvg is /proc/loadavg (1, 5, 15 minutes) at the end of the run.
	LoadAvg string `json:"load_avg,omitempty"`
}

const maxFirstErrors = 5

// Run drives sc with o.Concurrency workers until o.Duration or o.Count is
// reached or ctx ends. A cancelled ctx (Ctrl-C) is not an error: the result
// holds what was measured so far, with Interrupted set.
func Run(ctx context.Context, sc Scenario, o Options) (*Result, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Warmup > 0 {
		wctx, cancel := context.WithTimeout(ctx, o.Warmup)
		_, _ = runWorkers(wctx, sc, o.Concurrency, 0, nil, 0) // warm-up errors show up in the run proper
		cancel()
		if over(ctx) {
			return &Result{Scenario: sc.Name(), Target: sc.Target(), Concurrency: o.Concurrency, Interrupted: true}, nil
		}
	}
	var before ProcSample
	if o.ServerPID != 0 {
		var err error
		if before, err = ReadProc(o.ServerPID); err != nil {
			return nil, err
		}
	}
	runCtx := ctx
	if o.Duration > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	m, elapsed := runWorkers(runCtx, sc, o.Concurrency, o.Count, o.Progress, o.ProgressEvery)
	res := &Result{
		Scenario:    sc.Name(),
		Target:      sc.Target(),
		Concurrency: o.Concurrency,
		Elapsed:     elapsed,
		OK:          len(m.lat),
		Errors:      int(m.errs.Load()),
		FirstErrors: m.firstErrs,
		Throughput:  Rate(len(m.lat), elapsed),
		Latency:     Summarize(m.lat),
		Interrupted: over(ctx),
		LoadAvg:     LoadAvg(),
	}
	if o.ServerPID != 0 {
		after, err := ReadProc(o.ServerPID)
		if err != nil {
			return res, err
		}
		u := Usage(before, after)
		if res.OK > 0 {
			u.CPUPerOp = u.CPU / time.Duration(res.OK)
		}
		res.Server = &u
	}
	return res, nil
}

// over reports whether ctx is done or its deadline has passed. The second
// test matters on a loaded machine: the context's timer can fire
// milliseconds late, and in between gRPC fails every call at once with
// DeadlineExceeded (the deadline is past) while ctx.Err() is still nil.
func over(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// measured collects the workers' samples.
type measured struct {
	ops       atomic.Int64 // finished operations, ok or not
	errs      atomic.Int64
	mu        sync.Mutex
	lat       []time.Duration
	firstErrs []string
}

func (m *measured) failed(err error) {
	m.errs.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.firstErrs) < maxFirstErrors {
		m.firstErrs = append(m.firstErrs, err.Error())
	}
}

func runWorkers(ctx context.Context, sc Scenario, workers, count int, progress io.Writer, every time.Duration) (*measured, time.Duration) {
	m := &measured{}
	var issued atomic.Int64 // operations handed out, for --count
	var wg sync.WaitGroup
	start := time.Now()
	stopProgress := make(chan struct{})
	var progressDone sync.WaitGroup
	if progress != nil && every > 0 {
		progressDone.Add(1)
		go func() {
			defer progressDone.Done()
			t := time.NewTicker(every)
			defer t.Stop()
			last, lastAt := int64(0), start
			for {
				select {
				case <-stopProgress:
					return
				case now := <-t.C:
					n := m.ops.Load()
					fmt.Fprintf(progress, "  %6.1fs  %8d ops  %8.0f/s now  %6d errors\n",
						now.Sub(start).Seconds(), n, Rate(int(n-last), now.Sub(lastAt)), m.errs.Load())
					last, lastAt = n, now
				}
			}
		}()
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 1024)
			defer func() {
				m.mu.Lock()
				m.lat = append(m.lat, local...)
				m.mu.Unlock()
			}()
			for !over(ctx) {
				if count > 0 && issued.Add(1) > int64(count) {
					return
				}
				t0 := time.Now()
				err := sc.Do(ctx, w)
				d := time.Since(t0)
				if err != nil {
					if over(ctx) {
						return // cut short by the deadline or Ctrl-C: not a server error
					}
					m.failed(err)
				} else {
					local = append(local, d)
				}
				m.ops.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stopProgress)
	progressDone.Wait()
	return m, elapsed
}
