package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/bench"
)

// haBench is `sigil-bench ha`: the HA overhead benchmark (make bench-ha).
// For each node count it starts that many production-mode nodes on one
// throwaway PostgreSQL, spreads the clients over them and prints one table.
func haBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sigil-bench ha", flag.ContinueOnError)
	fs.SetOutput(stderr)
	nodes := fs.String("nodes", "1,2,3", "node counts to run, comma-separated (a fresh cluster and storage database each)")
	scen := fs.String("scenarios", strings.Join(bench.HAScenarios(), ","), "scenarios, comma-separated: "+strings.Join(bench.HAScenarios(), ", "))
	clients := fs.Int("c", 16, "concurrent clients, spread round robin over the nodes")
	duration := fs.Duration("duration", 10*time.Second, "length of each run")
	warmup := fs.Duration("warmup", 2*time.Second, "unmeasured warm-up before each run")
	bin := fs.String("sigil-bin", "bin/sigil", "sigil binary")
	scram := fs.Int("pg-scram-iterations", 0, "creds-postgres: the mount's scram_iterations (0: the engine's default, 4096)")
	serverLog := fs.String("server-log", "", "append every node's log to this file (default: discarded)")
	jsonOut := fs.String("json-out", "", "also write the rows as JSON to this file")
	progress := fs.Bool("progress", true, "print progress lines on stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("ha: unexpected argument %q", fs.Arg(0))
	}
	ns, err := parseIntList(*nodes)
	if err != nil {
		return fmt.Errorf("--nodes: %w", err)
	}
	if *clients < 1 || *duration <= 0 || *warmup < 0 || *scram < 0 {
		return errors.New("ha: -c must be at least 1, --duration positive, --warmup and --pg-scram-iterations not negative")
	}
	o := bench.HABenchOptions{Bin: *bin, Nodes: ns, Clients: *clients, Duration: *duration, Warmup: *warmup, SCRAMIterations: *scram,
		Logf: func(f string, a ...any) { fmt.Fprintf(stderr, f+"\n", a...) }}
	for s := range strings.SplitSeq(*scen, ",") {
		o.Scenarios = append(o.Scenarios, strings.TrimSpace(s))
	}
	if *progress {
		o.Progress = stderr
	}
	if *serverLog != "" {
		f, err := os.OpenFile(*serverLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("--server-log: %w", err)
		}
		defer f.Close()
		o.Log = f
	}
	rows, pgv, err := bench.RunHA(ctx, o)
	// Print what was measured even when a later run failed or Ctrl-C.
	if len(rows) > 0 {
		if werr := bench.WriteHATable(stdout, rows, pgv, *duration); err == nil {
			err = werr
		}
		if *jsonOut != "" {
			b, jerr := json.MarshalIndent(rows, "", "  ")
			if jerr == nil {
				jerr = os.WriteFile(*jsonOut, append(b, '\n'), 0o600)
			}
			if err == nil && jerr != nil {
				err = fmt.Errorf("--json-out: %w", jerr)
			}
		}
	}
	return err
}
