package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// Machine describes where a report was measured.
type Machine struct {
	Cores     int    `json:"cores"`
	CPUModel  string `json:"cpu_model"`
	GoVersion string `json:"go_version"`
}

// ThisMachine reads the CPU model from /proc/cpuinfo.
func ThisMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// LoadAvg is /proc/loadavg's first three fields ("" if unreadable).
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// Pair is one A/B comparison: the same scenario and concurrency against
// two targets, run back to back.
type Pair struct {
	Scenario    string  `json:"scenario"`
	Concurrency int     `json:"concurrency"`
	Round       int     `json:"round"`
	A           string  `json:"a"`
	B           string  `json:"b"`
	Throughput  float64 `json:"throughput_ratio"` // A/B
	P99         float64 `json:"p99_ratio"`        // A/B (lower is better for A)
}

// Report is everything one invocation measured.
type Report struct {
	Date     time.Time `json:"date"`
	Machine  Machine   `json:"machine"`
	Ceilings []Ceiling `json:"ceilings,omitempty"`
	Runs     []*Result `json:"runs"`
	Pairs    []Pair    `json:"pairs,omitempty"`
	// Leases holds the leases scenario's figures (bench/leases.go).
	Leases *LeasesReport `json:"leases,omitempty"`
	Notes  []string      `json:"notes,omitempty"`
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

func mib(b int64) string { return fmt.Sprintf("%.0f", float64(b)/(1<<20)) }

// WriteTable writes the report as aligned text tables.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "sigil-bench  %s  %d cores (%s)  %s\n\n", r.Date.UTC().Format(time.RFC3339), r.Machine.Cores, r.Machine.CPUModel, r.Machine.GoVersion)
	if len(r.Ceilings) > 0 {
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "ceiling\tgoroutines\trate/s\tper op ms\t")
		for _, c := range r.Ceilings {
			fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t\n", c.Name, c.Goroutines, c.Rate, ms(c.PerOp))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\ttarget\tclients\tok\terrors\trate/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\tsrv CPU cores\tsrv CPU ms/op\tsrv RSS MiB\tof ceiling\tCPU/op of ceiling\tload avg\t")
	for _, x := range r.Runs {
		cpu, perOp, rss := "-", "-", "-"
		if x.Server != nil {
			cpu, perOp, rss = fmt.Sprintf("%.2f", x.Server.CPUCores), ms(x.Server.CPUPerOp), mib(x.Server.RSS)
		}
		of, cpuOf := "-", "-"
		if x.Ceiling != nil {
			of = fmt.Sprintf("%.0f%%", 100*x.OfCeiling)
		}
		if x.CPUOfCeiling > 0 {
			cpuOf = fmt.Sprintf("%.0f%%", 100*x.CPUOfCeiling)
		}
		name := x.Scenario
		if x.Interrupted {
			name += " (interrupted)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			name, x.Target, x.Concurrency, x.OK, x.Errors, x.Throughput,
			ms(x.Latency.P50), ms(x.Latency.P90), ms(x.Latency.P99), ms(x.Latency.Max), cpu, perOp, rss, of, cpuOf, x.LoadAvg)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, x := range r.Runs {
		for _, e := range x.FirstErrors {
			fmt.Fprintf(w, "  error (%s/%s c=%d): %s\n", x.Scenario, x.Target, x.Concurrency, e)
		}
	}
	if len(r.Pairs) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "pair\tround\tclients\tthroughput A/B\tp99 A/B\t")
		for _, p := range r.Pairs {
			fmt.Fprintf(tw, "%s: %s / %s\t%d\t%d\t%.2f\t%.2f\t\n", p.Scenario, p.A, p.B, p.Round, p.Concurrency, p.Throughput, p.P99)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if r.Leases != nil {
		if err := r.Leases.writeTable(w); err != nil {
			return err
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}
