package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/bench"
)

// execute measures the ceilings, then runs every (round, clients, target)
// combination, alternating targets, and prints the report. Ctrl-C stops
// the current run and prints what was measured so far.
func execute(ctx context.Context, c *config, stdout, stderr io.Writer) (err error) {
	rep := &bench.Report{Date: time.Now(), Machine: bench.ThisMachine()}
	printed := false
	defer func() {
		if printed {
			return
		}
		if perr := printReport(c, rep, stdout); err == nil {
			err = perr
		}
	}()
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }

	// The sign ceiling with one goroutine (for one client) and with one per
	// core (for several). Other scenarios measure their own ceilings.
	var pool []bench.CSR
	var perCore, allCores, hsmCeil *bench.Ceiling
	if c.scenario == "sign" {
		if pool, err = bench.NewCSRPool(bench.CSRPoolOptions{Keys: c.keys, CSRs: c.csrs, SPIFFETrustDomain: c.trustDom}); err != nil {
			return err
		}
		if perCore, allCores, hsmCeil, err = signCeilings(ctx, c, rep, pool, logf); err != nil {
			return err
		}
	}

	sigil := c.sigil
	sigilPID := c.serverPID
	// srv is the dev server running now: the leases scenario restarts it.
	var srv *bench.DevServer
	var devOpts bench.DevOptions
	var acmeResp *bench.ACMEResponders
	if c.startDev && slices.Contains(c.targets, "sigil") {
		dir := c.devDir
		if dir == "" {
			if dir, err = os.MkdirTemp("", "sigil-bench-"); err != nil {
				return fmt.Errorf("dev data directory: %w", err)
			}
			defer os.RemoveAll(dir)
		}
		var logw io.Writer
		if c.serverLog != "" {
			f, err := os.Create(c.serverLog)
			if err != nil {
				return fmt.Errorf("server log: %w", err)
			}
			defer f.Close()
			logw = f
		}
		extra := append([]string(nil), c.serverArg...)
		if c.scenario == "acme" {
			// The server validates http-01 against the harness's responder
			// and resolves the benchmark zone with the harness's DNS.
			if acmeResp, err = bench.StartACMEResponders(c.acmeHTTPAddr, c.acmeDNSAddr); err != nil {
				return fmt.Errorf("acme responders: %w", err)
			}
			defer acmeResp.Close()
			extra = append(extra, acmeResp.ServerArgs()...)
			if hasConfigArg(c.serverArg) {
				logf("acme: --server-arg gives the server's --config; its ACME rate limits apply as configured there")
			} else {
				confDir, err := os.MkdirTemp("", "sigil-bench-conf-")
				if err != nil {
					return fmt.Errorf("acme server config: %w", err)
				}
				defer os.RemoveAll(confDir)
				conf, err := bench.WriteACMEServerConfig(confDir)
				if err != nil {
					return err
				}
				extra = append(extra, "--config", conf)
			}
		}
		if c.hsm != "" {
			extra = append(extra, "--hsm", c.hsm)
		}
		if c.devStorage == "postgres" {
			pg, dsn, err := bench.StartStoragePostgres(ctx)
			if err != nil {
				return fmt.Errorf("storage: %w", err)
			}
			defer pg.Stop()
			v, _ := pg.Version(ctx)
			logf("storage: a throwaway PostgreSQL %s on 127.0.0.1:%d, durability on", v, pg.Port())
			extra = append(extra, "--storage", dsn)
		}
		devOpts = bench.DevOptions{Bin: c.sigilBin, Dir: dir, Pprof: c.pprof, ExtraArgs: extra, Log: logw}
		if srv, err = bench.StartDev(ctx, devOpts); err != nil {
			return err
		}
		defer func() {
			// srv, not the server started here: a restart replaces it.
			if serr := srv.Stop(); err == nil && serr != nil {
				err = fmt.Errorf("stopping the dev server: %w", serr)
			}
		}()
		sigil, sigilPID = srv.Conn, srv.PID
		logf("started sigil dev server pid %d on %s (data %s)", srv.PID, srv.Conn.Addr, dir)
		if c.pprof {
			logf("pprof: go tool pprof -seconds 10 http://%s/debug/pprof/profile", srv.PprofAddr)
		}
		if c.hold {
			defer func() {
				// Print the report now, not after the hold.
				if perr := printReport(c, rep, stdout); err == nil {
					err = perr
				}
				printed = true
				logf("holding the server (pid %d) until Ctrl-C", srv.PID)
				<-ctx.Done()
			}()
		}
	}

	switch c.scenario {
	case "leases":
		return executeLeases(ctx, c, rep, sigil, sigilPID, &srv, devOpts, stderr, logf)
	case "creds-postgres":
		return executeCredsPostgres(ctx, c, rep, sigil, sigilPID, stderr, logf)
	case "tokens", "transit-encrypt":
		return executeCheapEngine(ctx, c, rep, sigil, sigilPID, stderr, logf)
	case "acme":
		return executeACME(ctx, c, rep, srv, acmeResp, stderr, logf)
	case "kv":
		runs, ceilings, err := bench.RunKV(ctx, bench.KVOptions{Conn: sigil, Mount: "bench-kv", Rounds: c.rounds,
			Concurrency: c.concurrency, Conns: func(n int) int { return connsFor(c.conns, n) },
			Run:     bench.Options{Duration: c.duration, Count: c.count, Warmup: c.warmup, Progress: stderr, ProgressEvery: c.progress, ServerPID: sigilPID},
			Ceiling: c.ceiling, CeilingFor: c.ceilingDuration, Logf: logf})
		rep.Runs, rep.Ceilings = append(rep.Runs, runs...), append(rep.Ceilings, ceilings...)
		return err
	}

	var prevByKey = map[[2]int]*bench.Result{} // (round, clients) → first target's result
	for round := 1; round <= c.rounds; round++ {
		for _, n := range c.concurrency {
			for ti, target := range c.targets {
				if ctx.Err() != nil {
					return nil
				}
				var sc bench.Scenario
				pid := sigilPID
				switch target {
				case "sigil":
					sc, err = bench.NewSigilSign(sigil, c.profile, pool, n, connsFor(c.conns, n))
				case "step-ca":
					sc, err = bench.NewStepCASign(c.stepca, pool, n)
					pid = c.stepcaPID
				}
				if err != nil {
					return err
				}
				logf("run: %s against %s, %d clients, round %d/%d (load %s)", c.scenario, target, n, round, c.rounds, bench.LoadAvg())
				res, err := bench.Run(ctx, sc, bench.Options{
					Concurrency: n, Duration: c.duration, Count: c.count, Warmup: c.warmup,
					Progress: stderr, ProgressEvery: c.progress, ServerPID: pid,
				})
				cerr := sc.Close()
				if err != nil {
					return fmt.Errorf("%s against %s, %d clients: %w", c.scenario, target, n, err)
				}
				if cerr != nil {
					logf("closing the %s clients: %v", target, cerr)
				}
				attachCeiling(res, n, perCore, allCores, hsmCeil)
				rep.Runs = append(rep.Runs, res)
				key := [2]int{round, n}
				if ti == 0 {
					prevByKey[key] = res
				} else if a := prevByKey[key]; a != nil && res.Throughput > 0 {
					p := bench.Pair{Scenario: c.scenario, Concurrency: n, Round: round, A: a.Target, B: res.Target,
						Throughput: a.Throughput / res.Throughput}
					if res.Latency.P99 > 0 {
						p.P99 = float64(a.Latency.P99) / float64(res.Latency.P99)
					}
					rep.Pairs = append(rep.Pairs, p)
				}
			}
		}
	}
	return nil
}

// signCeilings measures the sign scenario's ceilings (and the raw PKCS#11
// rate with --hsm) and adds them to rep.
func signCeilings(ctx context.Context, c *config, rep *bench.Report, pool []bench.CSR, logf func(string, ...any)) (perCore, allCores, hsmCeil *bench.Ceiling, err error) {
	if c.ceiling {
		logf("ceiling: in-process CSR verify + certificate signature, 1 and %d goroutines (%v each; load %s)", bench.Cores(), c.ceilingDuration, bench.LoadAvg())
		one, err := bench.SignCeiling(ctx, pool, 1, c.ceilingDuration)
		if err != nil {
			return nil, nil, nil, err
		}
		all, err := bench.SignCeiling(ctx, pool, bench.Cores(), c.ceilingDuration)
		if err != nil {
			return nil, nil, nil, err
		}
		perCore, allCores = &one, &all
		rep.Ceilings = append(rep.Ceilings, one, all)
	}
	if c.hsm != "" {
		uri, err := bench.ParsePKCS11URI(c.hsm)
		if err != nil {
			return nil, nil, nil, err
		}
		logf("ceiling: raw PKCS#11 signing on token %q (%v)", uri.Token, c.ceilingDuration)
		hc, err := bench.HSMSignCeiling(ctx, uri, 1, c.ceilingDuration)
		if err != nil {
			return nil, nil, nil, err
		}
		rep.Ceilings = append(rep.Ceilings, hc)
		hsmCeil = &hc
		rep.Notes = append(rep.Notes, "with --hsm the sign ceiling is the lower of the raw token rate and the in-process signing ceiling")
	}
	return perCore, allCores, hsmCeil, nil
}

// attachCeiling compares a run with the ceiling of the same parallelism:
// one client keeps at most one core busy, so it is held to the one-core
// ceiling; several clients to the whole machine's.
func attachCeiling(res *bench.Result, clients int, perCore, allCores, hsm *bench.Ceiling) {
	ce := allCores
	if clients == 1 {
		ce = perCore
	}
	if hsm != nil && (ce == nil || hsm.Rate < ce.Rate) {
		ce = hsm
	}
	if ce == nil || ce.Rate <= 0 || res.Target != "sigil" && hsm == ce {
		return
	}
	c := *ce
	res.Ceiling = &c
	res.OfCeiling = res.Throughput / c.Rate
	if res.Server != nil && res.Server.CPUPerOp > 0 {
		res.CPUOfCeiling = float64(c.PerOp) / float64(res.Server.CPUPerOp)
	}
}

func connsFor(conns, clients int) int {
	if conns <= 0 {
		return clients
	}
	return conns
}

func printReport(c *config, rep *bench.Report, stdout io.Writer) error {
	if c.jsonOut != "" {
		f, err := os.Create(c.jsonOut)
		if err != nil {
			return fmt.Errorf("--json-out: %w", err)
		}
		werr := rep.WriteJSON(f)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return fmt.Errorf("--json-out: %w", werr)
		}
	}
	if c.json {
		return rep.WriteJSON(stdout)
	}
	return rep.WriteTable(stdout)
}

// hasConfigArg reports whether the server arguments name a config file.
func hasConfigArg(args []string) bool {
	return slices.ContainsFunc(args, func(a string) bool {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		return strings.HasPrefix(a, "-") && name == "config"
	})
}
