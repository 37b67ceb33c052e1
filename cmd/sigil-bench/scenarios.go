package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"slices"
	"time"

	legolog "github.com/go-acme/lego/v4/log"

	"github.com/sigil-ca/sigil/bench"
)

// executeLeases runs the leases scenario with the largest -c as its
// clients. srv is the dev server (nil against --addr); the restart phase
// replaces it with the restarted one.
func executeLeases(ctx context.Context, c *config, rep *bench.Report, sigil bench.SigilConn, pid int, srv **bench.DevServer,
	devOpts bench.DevOptions, stderr io.Writer, logf func(string, ...any)) error {
	clients := slices.Max(c.concurrency)
	if len(c.concurrency) > 1 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("leases: one run with the largest -c, %d clients", clients))
	}
	o := bench.LeasesOptions{
		Conn: sigil, PID: pid, Dev: *srv, DevOptions: devOpts, MetricsURL: c.metricsURL,
		Source: c.leaseSource, Setup: c.leaseEngine, Leases: c.leases,
		Clients: clients, Conns: connsFor(c.conns, clients),
		ShortTTL: c.leaseShortTTL, LongTTL: c.leaseLongTTL, Settle: c.leaseSettle, NoRestart: c.leaseNoRestart,
		Progress: stderr, ProgressEvery: c.progress, Logf: logf,
	}
	lr, runs, dev, err := bench.RunLeases(ctx, o)
	if dev != nil {
		*srv = dev
	}
	rep.Runs = append(rep.Runs, runs...)
	rep.Leases = lr
	switch {
	case c.leaseNoRestart:
		rep.Notes = append(rep.Notes, "leases: no restart measured (--lease-no-restart)")
	case *srv == nil:
		rep.Notes = append(rep.Notes, "leases: no restart measured: restarting needs --start-dev")
	}
	return err
}

// executeCredsPostgres runs creds-postgres: against a throwaway PostgreSQL
// (or --pg-dsn), for every round and -c level, the raw CREATE/DROP ROLE
// ceiling at that concurrency right before Sigil's mint+revoke run, which
// is reported as a ratio of it.
func executeCredsPostgres(ctx context.Context, c *config, rep *bench.Report, sigil bench.SigilConn, pid int,
	stderr io.Writer, logf func(string, ...any)) error {
	dsn := c.pgDSN
	if dsn == "" {
		logf("starting a throwaway PostgreSQL")
		pg, err := bench.StartPostgres(ctx)
		if err != nil {
			return err
		}
		defer pg.Stop()
		dsn = pg.DSN("postgres")
		if v, err := pg.Version(ctx); err == nil {
			rep.Notes = append(rep.Notes, "creds-postgres: throwaway PostgreSQL "+v+" (fsync, synchronous_commit and full_page_writes off) for Sigil and the ceiling alike")
		}
	}
	iter := "the engine's default scram_iterations (4096)"
	if c.pgSCRAM > 0 {
		iter = fmt.Sprintf("scram_iterations=%d", c.pgSCRAM)
	}
	rep.Notes = append(rep.Notes, "creds-postgres: the mount uses default statements (thorough revocation) and "+iter+
		"; the ceiling sends a clear password, hashed by the server at its own 4096 iterations")
	cc, err := sigil.Dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	// This run's own Sigil role and database-role prefix: its final check
	// must not count (or revoke) another harness's credentials.
	run := bench.NewCredsRun(c.pgMount, c.pgRole)
	logf("creds-postgres: role %s/%s, database roles %s*", run.Mount, run.Role(), run.UserPrefix())
	for round := 1; round <= c.rounds; round++ {
		for _, n := range c.concurrency {
			if ctx.Err() != nil {
				return nil
			}
			var ce *bench.Ceiling
			if c.ceiling {
				logf("ceiling: raw CREATE ROLE + DROP ROLE through pgx, %d connections (%v; load %s)", n, c.ceilingDuration, bench.LoadAvg())
				x, err := bench.PostgresRoleCeiling(ctx, dsn, n, c.ceilingDuration)
				if err != nil {
					return err
				}
				rep.Ceilings = append(rep.Ceilings, x)
				ce = &x
			}
			// The engine's pool gets as many connections as the clients.
			if err := bench.SetupEngine(ctx, cc, bench.PostgresEngineSetup(run, dsn, n, c.pgSCRAM)); err != nil {
				return err
			}
			sc, err := bench.NewCredsMintRevoke(sigil, "creds-postgres", run.Mount, run.Role(), []string{"username", "password"}, n, connsFor(c.conns, n))
			if err != nil {
				return err
			}
			logf("run: creds-postgres against sigil, %d clients, round %d/%d (load %s)", n, round, c.rounds, bench.LoadAvg())
			res, err := bench.Run(ctx, sc, bench.Options{Concurrency: n, Duration: c.duration, Count: c.count, Warmup: c.warmup,
				Progress: stderr, ProgressEvery: c.progress, ServerPID: pid})
			cerr := sc.Close()
			if err != nil {
				return fmt.Errorf("creds-postgres, %d clients: %w", n, err)
			}
			if cerr != nil {
				logf("closing the clients: %v", cerr)
			}
			if ce != nil && ce.Rate > 0 {
				res.Ceiling = ce
				res.OfCeiling = res.Throughput / ce.Rate
			}
			rep.Runs = append(rep.Runs, res)
		}
	}
	// Operations cut short by the end of a run (or Ctrl-C) leave leased
	// credentials the clients never received, and mints the server was
	// still finishing; revoke them by this run's lease prefix, after which
	// none of the roles this run created may remain. A lease still pending (a mint that did not complete) is
	// revoked by the server's expiry worker once its window ends, so the
	// check retries until then; a role left after that is a credential
	// without a lease, and fails the run.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
	defer cancel()
	revoked, left, err := bench.RevokeAndCountRoles(rctx, cc, run, dsn, 2*time.Minute, logf)
	if err != nil {
		return err
	}
	rep.Notes = append(rep.Notes, fmt.Sprintf("creds-postgres: after the runs %d leases cut short were revoked by prefix; %d %s* roles remain", revoked, left, run.UserPrefix()))
	if left > 0 {
		return fmt.Errorf("creds-postgres: %d %s* roles remain after revoking every lease under %s: credentials without a lease", left, run.UserPrefix(), run.LeasePrefix())
	}
	return nil
}

// executeCheapEngine runs tokens (mint an opaque token, introspect it,
// revoke its lease) or transit-encrypt (one 1 KiB aes256-gcm encryption
// per call) for every round and -c level. transit-encrypt is reported as
// a ratio of raw in-process AES-256-GCM at the same concurrency; tokens has
// no physical ceiling beyond the lease write it is built on.
func executeCheapEngine(ctx context.Context, c *config, rep *bench.Report, sigil bench.SigilConn, pid int,
	stderr io.Writer, logf func(string, ...any)) error {
	cc, err := sigil.Dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	const name = "bench"
	switch c.scenario {
	case "tokens":
		err = bench.SetupEngine(ctx, cc, bench.TokensSetup("bench-tokens", name))
	default:
		err = bench.SetupTransit(ctx, cc, "bench-transit", name)
	}
	if err != nil {
		return err
	}
	for round := 1; round <= c.rounds; round++ {
		for _, n := range c.concurrency {
			if ctx.Err() != nil {
				return nil
			}
			var ce *bench.Ceiling
			if c.ceiling && c.scenario == "transit-encrypt" {
				x, err := bench.TransitCeiling(ctx, n, c.ceilingDuration)
				if err != nil {
					return err
				}
				rep.Ceilings = append(rep.Ceilings, x)
				ce = &x
			}
			var sc bench.Scenario
			if c.scenario == "tokens" {
				sc, err = bench.NewTokensMintIntrospect(sigil, "bench-tokens", name, n, connsFor(c.conns, n))
			} else {
				sc, err = bench.NewTransitEncrypt(sigil, "bench-transit", name, 1, n, connsFor(c.conns, n))
			}
			if err != nil {
				return err
			}
			logf("run: %s against sigil, %d clients, round %d/%d (load %s)", c.scenario, n, round, c.rounds, bench.LoadAvg())
			res, err := bench.Run(ctx, sc, bench.Options{Concurrency: n, Duration: c.duration, Count: c.count, Warmup: c.warmup,
				Progress: stderr, ProgressEvery: c.progress, ServerPID: pid})
			if cerr := sc.Close(); cerr != nil {
				logf("closing the clients: %v", cerr)
			}
			if err != nil {
				return fmt.Errorf("%s, %d clients: %w", c.scenario, n, err)
			}
			if ce != nil && ce.Rate > 0 {
				res.Ceiling = ce
				res.OfCeiling = res.Throughput / ce.Rate
			}
			rep.Runs = append(rep.Runs, res)
		}
	}
	return nil
}

// executeACME runs full http-01 enrollments with lego clients, against
// the dev server it started (which validates against the harness's
// responders, so --start-dev is required) and, with --targets
// sigil,step-ca, against step-ca alternately, pairing the results.
func executeACME(ctx context.Context, c *config, rep *bench.Report, srv *bench.DevServer, resp *bench.ACMEResponders,
	stderr io.Writer, logf func(string, ...any)) error {
	if srv == nil || resp == nil {
		return errors.New("--scenario acme needs --start-dev")
	}
	// lego logs every step of every enrollment; the report is the output.
	legolog.Logger = stdlog.New(io.Discard, "", 0)
	rep.Notes = append(rep.Notes, "acme: each client registers one account, then enrolls a fresh name per operation (new order, http-01, finalize, download)")
	if c.acmeRequestLimit > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("acme: lego's request limit %d/s (a %v pause before each authorization fetch; lego's default 18/s pauses 55 ms)", c.acmeRequestLimit, time.Second/time.Duration(c.acmeRequestLimit)))
	} else {
		rep.Notes = append(rep.Notes, "acme: lego's default request limit of 18/s: every enrollment includes lego's 55 ms pause before fetching its authorization")
	}
	prev := map[[2]int]*bench.Result{}
	for round := 1; round <= c.rounds; round++ {
		for _, n := range c.concurrency {
			for ti, target := range c.targets {
				if ctx.Err() != nil {
					return nil
				}
				dir, ca, pid := "https://"+srv.HTTPSAddr+"/acme/directory", srv.Conn.CACert, srv.PID
				if target == "step-ca" {
					dir, ca, pid = c.stepca.URL+"/acme/acme/directory", c.stepca.Root, c.stepcaPID
				}
				sc, err := bench.NewACMEEnroll(ctx, target, dir, ca, resp, n, c.acmeRequestLimit)
				if err != nil {
					return fmt.Errorf("acme against %s: %w", target, err)
				}
				logf("run: acme against %s, %d clients, round %d/%d (load %s)", target, n, round, c.rounds, bench.LoadAvg())
				res, err := bench.Run(ctx, sc, bench.Options{Concurrency: n, Duration: c.duration, Count: c.count, Warmup: c.warmup,
					Progress: stderr, ProgressEvery: c.progress, ServerPID: pid})
				_ = sc.Close()
				if err != nil {
					return fmt.Errorf("acme against %s, %d clients: %w", target, n, err)
				}
				rep.Runs = append(rep.Runs, res)
				key := [2]int{round, n}
				if ti == 0 {
					prev[key] = res
				} else if a := prev[key]; a != nil && res.Throughput > 0 {
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
