package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
)

// HABenchOptions drive the HA overhead benchmark (`make bench-ha`): for
// each node count, a fresh cluster of that many production-mode nodes on
// one throwaway PostgreSQL, each scenario run with Clients clients spread
// over the nodes.
type HABenchOptions struct {
	Bin       string
	Nodes     []int    // node counts, e.g. 1, 2, 3
	Scenarios []string // "sign", "creds-postgres"
	Clients   int
	Duration  time.Duration
	Warmup    time.Duration
	// SCRAMIterations is the creds mount's scram_iterations (0: default).
	SCRAMIterations int
	// Log receives the nodes' logs (nil: discarded); Logf progress lines.
	Log  io.Writer
	Logf func(string, ...any)
	// Progress, when set, receives the runs' progress lines.
	Progress io.Writer
}

// HARow is one (scenario, node count) measurement.
type HARow struct {
	Scenario string        `json:"scenario"`
	Nodes    int           `json:"nodes"`
	Clients  int           `json:"clients"`
	Result   *Result       `json:"result"`
	PerNode  []HANodeUsage `json:"per_node"`
	// CPUPerOp is every node's CPU together over every operation.
	CPUPerOp time.Duration `json:"cpu_per_op_ns"`
}

// HANodeUsage is one node's share of a run.
type HANodeUsage struct {
	PID   int       `json:"pid"`
	Ops   int64     `json:"ops"` // operations its clients completed
	Usage ProcUsage `json:"usage"`
}

// HAScenarios are the scenarios the HA benchmark runs.
func HAScenarios() []string { return []string{"sign", "creds-postgres"} }

// RunHA runs the HA benchmark and returns a row per (node count,
// scenario). The PostgreSQL server holds one storage database per node
// count (each cluster starts empty) and is also the creds target (its
// postgres database), as in a one-database deployment.
func RunHA(ctx context.Context, o HABenchOptions) (rows []HARow, pgVersion string, err error) {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	for _, s := range o.Scenarios {
		if s != "sign" && s != "creds-postgres" {
			return nil, "", fmt.Errorf("ha: scenario %q: want %s", s, strings.Join(HAScenarios(), ", "))
		}
	}
	if o.Clients < 1 || o.Duration <= 0 || len(o.Nodes) == 0 {
		return nil, "", fmt.Errorf("ha: need clients ≥ 1, a positive duration and node counts")
	}
	var pool []CSR
	for _, s := range o.Scenarios {
		if s == "sign" {
			if pool, err = NewCSRPool(CSRPoolOptions{Keys: 8, CSRs: 512}); err != nil {
				return nil, "", err
			}
		}
	}
	o.Logf("starting a throwaway PostgreSQL")
	pg, err := StartPostgres(ctx)
	if err != nil {
		return nil, "", err
	}
	defer pg.Stop()
	pgVersion, _ = pg.Version(ctx)
	for _, n := range o.Nodes {
		if n < 1 {
			return rows, pgVersion, fmt.Errorf("ha: %d nodes: need at least 1", n)
		}
		r, err := runHACluster(ctx, o, pg, n, pool)
		rows = append(rows, r...)
		if err != nil || ctx.Err() != nil {
			return rows, pgVersion, err
		}
	}
	return rows, pgVersion, nil
}

// runHACluster starts n nodes on a fresh storage database and runs every
// scenario against them.
func runHACluster(ctx context.Context, o HABenchOptions, pg *Postgres, n int, pool []CSR) (rows []HARow, err error) {
	db := fmt.Sprintf("sigil_ha_%d", n)
	if err := createDatabase(ctx, pg.DSN("postgres"), db); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "sigil-bench-ha-")
	if err != nil {
		return nil, fmt.Errorf("ha: scratch directory: %w", err)
	}
	defer os.RemoveAll(dir)
	o.Logf("starting %d sigil node(s) on PostgreSQL database %s", n, db)
	cl, err := StartHACluster(ctx, HAOptions{Bin: o.Bin, Dir: dir, DSN: pg.DSN(db), Nodes: n, Log: o.Log})
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := cl.Stop(); err == nil && serr != nil {
			err = serr
		}
	}()
	o.Logf("nodes %s (pids %v)", cl.Conn.Addr, cl.PIDs())
	for _, s := range o.Scenarios {
		if ctx.Err() != nil {
			return rows, nil
		}
		row, err := runHAScenario(ctx, o, cl, pg, s, pool)
		if row != nil {
			rows = append(rows, *row)
		}
		if err != nil {
			return rows, fmt.Errorf("%s on %d node(s): %w", s, n, err)
		}
	}
	return rows, nil
}

func runHAScenario(ctx context.Context, o HABenchOptions, cl *HACluster, pg *Postgres, name string, pool []CSR) (_ *HARow, err error) {
	n := len(cl.Nodes)
	var sc Scenario
	switch name {
	case "sign":
		sc, err = NewSigilSign(cl.Conn, "server", pool, o.Clients, o.Clients)
	case "creds-postgres":
		// Configuration goes through the first node (Dial takes the first
		// address); the others read the mount from the shared storage.
		cc, derr := cl.Conn.Dial()
		if derr != nil {
			return nil, derr
		}
		defer cc.Close()
		run := NewCredsRun("bench-db", "bench")
		// The mount's pool is per node: the clients of one node at most.
		if err := SetupEngine(ctx, cc, PostgresEngineSetup(run, pg.DSN("postgres"), (o.Clients+n-1)/n, o.SCRAMIterations)); err != nil {
			return nil, err
		}
		defer func() {
			// Nothing this run created may outlive it: revoke its leases
			// left by runs cut short and count its roles.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
			defer cancel()
			_, left, cerr := RevokeAndCountRoles(rctx, cc, run, pg.DSN("postgres"), 2*time.Minute, o.Logf)
			if cerr == nil && left > 0 {
				cerr = fmt.Errorf("%d %s* roles remain after revoking every lease under %s: credentials without a lease", left, run.UserPrefix(), run.LeasePrefix())
			}
			if err == nil {
				err = cerr
			}
		}()
		sc, err = NewCredsMintRevoke(cl.Conn, "creds-postgres", run.Mount, run.Role(), []string{"username", "password"}, o.Clients, o.Clients)
	}
	if err != nil {
		return nil, err
	}
	pw := CountPerWorker(sc, o.Clients)
	defer func() {
		if cerr := pw.Close(); cerr != nil {
			o.Logf("closing the clients: %v", cerr)
		}
	}()
	if o.Warmup > 0 {
		// Unmeasured, and outside the CPU samples below.
		if _, err := Run(ctx, pw, Options{Concurrency: o.Clients, Duration: o.Warmup}); err != nil {
			return nil, err
		}
		pw.Reset()
	}
	before := make([]ProcSample, n)
	for i, pid := range cl.PIDs() {
		if before[i], err = ReadProc(pid); err != nil {
			return nil, err
		}
	}
	o.Logf("run: %s, %d node(s), %d clients (load %s)", name, n, o.Clients, LoadAvg())
	res, err := Run(ctx, pw, Options{Concurrency: o.Clients, Duration: o.Duration, Progress: o.Progress, ProgressEvery: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	row := &HARow{Scenario: name, Nodes: n, Clients: o.Clients, Result: res}
	var total time.Duration
	for i, pid := range cl.PIDs() {
		after, err := ReadProc(pid)
		if err != nil {
			return row, err
		}
		u := HANodeUsage{PID: pid, Usage: Usage(before[i], after)}
		for w := range o.Clients {
			if NodeOf(w, o.Clients, o.Clients, n) == i {
				u.Ops += pw.OK(w)
			}
		}
		if u.Ops > 0 {
			u.Usage.CPUPerOp = u.Usage.CPU / time.Duration(u.Ops)
		}
		total += u.Usage.CPU
		row.PerNode = append(row.PerNode, u)
	}
	if res.OK > 0 {
		row.CPUPerOp = total / time.Duration(res.OK)
	}
	return row, nil
}

// createDatabase creates db on the server at dsn (a superuser URL).
func createDatabase(ctx context.Context, dsn, db string) error {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
		return fmt.Errorf("postgres: create database %s: %w", db, err)
	}
	return nil
}

// WriteHATable prints the rows as one table: throughput, latency, errors,
// all nodes' CPU per operation, and per node (n1 / n2 / …) the CPU cores
// it used and its CPU per operation of its own clients.
func WriteHATable(w io.Writer, rows []HARow, pgVersion string, d time.Duration) error {
	clients := 0
	if len(rows) > 0 {
		clients = rows[0].Clients
	}
	fmt.Fprintf(w, "HA overhead: %d clients spread round robin over the nodes, %v per run, %d cores, PostgreSQL %s (storage and creds target), load %s\n",
		clients, d, Cores(), pgVersion, LoadAvg())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tnodes\tops/s\tp50 ms\tp99 ms\terrors\tCPU ms/op (all nodes)\tCPU cores per node\tCPU ms/op per node\t")
	for _, r := range rows {
		var cores, perOp []string
		for _, u := range r.PerNode {
			cores = append(cores, fmt.Sprintf("%.2f", u.Usage.CPUCores))
			perOp = append(perOp, ms(u.Usage.CPUPerOp))
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%d\t%s\t%s\t%s\t\n", r.Scenario, r.Nodes, r.Result.Throughput,
			ms(r.Result.Latency.P50), ms(r.Result.Latency.P99), r.Result.Errors, ms(r.CPUPerOp),
			strings.Join(cores, " / "), strings.Join(perOp, " / "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		for _, e := range r.Result.FirstErrors {
			fmt.Fprintf(w, "  %s, %d node(s): error: %s\n", r.Scenario, r.Nodes, e)
		}
	}
	return nil
}
