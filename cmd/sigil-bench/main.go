// Command sigil-bench is Sigil's load harness: it drives a running Sigil
// (or one it starts with --start-dev, or a step-ca for the side-by-side
// comparison) over its real interfaces with N concurrent clients, and
// reports throughput, latency percentiles, errors, server CPU and RSS, and
// each figure as a ratio of the in-process ceiling measured in the same run.
//
//	sigil-bench [flags]                       run scenarios
//	sigil-bench stepca-setup --dir D --addr A write a step-ca configuration
//	sigil-bench ha [--nodes 1,2,3]            HA overhead: 1, 2, 3 nodes on one PostgreSQL
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sigil-ca/sigil/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sigil-bench:", err)
		os.Exit(1)
	}
}

// config is the parsed command line.
type config struct {
	scenario    string
	targets     []string
	concurrency []int
	duration    time.Duration
	count       int
	warmup      time.Duration
	rounds      int

	sigil     bench.SigilConn
	serverPID int
	profile   string
	trustDom  string
	conns     int
	keys      int
	csrs      int

	startDev  bool
	sigilBin  string
	devDir    string
	pprof     bool
	serverLog string
	hold      bool
	serverArg []string

	ceiling         bool
	ceilingDuration time.Duration
	hsm             string

	stepca    bench.StepCAConn
	stepcaPID int

	json     bool
	jsonOut  string
	progress time.Duration

	// leases
	leases           int
	leaseSource      string
	leaseEngine      bench.EngineSetup
	leaseShortTTL    time.Duration
	leaseLongTTL     time.Duration
	leaseSettle      time.Duration
	leaseNoRestart   bool
	metricsURL       string
	acmeHTTPAddr     string
	acmeRequestLimit int
	acmeDNSAddr      string
	leaseFieldsFlag  string
	leaseConfigFlag  string

	// devStorage is the --start-dev server's storage: sqlite or postgres.
	devStorage string

	// creds-postgres
	pgDSN   string
	pgMount string
	pgRole  string
	pgSCRAM int
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// parseArgs parses the run command's flags, with SIGIL_ADDR, SIGIL_TOKEN
// and SIGIL_CACERT as defaults.
func parseArgs(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("sigil-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var targets, conc string
	fs.StringVar(&c.scenario, "scenario", "sign", "scenario: "+strings.Join(bench.Scenarios(), ", ")+" (all are implemented; acme needs --start-dev)")
	fs.StringVar(&targets, "targets", "sigil", "comma-separated targets, run alternately (A B A B): sigil, step-ca")
	fs.StringVar(&conc, "c", "1,16", "concurrent clients; a comma-separated list runs each level")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "length of each run (0: use --count)")
	fs.IntVar(&c.count, "count", 0, "operations per run (0: use --duration); with both, whichever comes first")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "unmeasured warm-up before each run")
	fs.IntVar(&c.rounds, "rounds", 1, "repeat every (target, clients) run this many times, alternating targets")
	fs.StringVar(&c.sigil.Addr, "addr", getenv("SIGIL_ADDR"), "Sigil gRPC address (env SIGIL_ADDR)")
	fs.StringVar(&c.sigil.Token, "token", getenv("SIGIL_TOKEN"), "Sigil API token (env SIGIL_TOKEN)")
	fs.StringVar(&c.sigil.CACert, "cacert", getenv("SIGIL_CACERT"), "PEM CA certificate for Sigil's TLS (env SIGIL_CACERT)")
	fs.IntVar(&c.serverPID, "server-pid", 0, "Sigil server PID: report its CPU and RSS from /proc")
	fs.StringVar(&c.profile, "profile", "server", "signing profile: server (DNS names) or workload (SPIFFE IDs, needs --trust-domain)")
	fs.StringVar(&c.trustDom, "trust-domain", "", "SPIFFE trust domain for the workload profile's CSRs")
	fs.IntVar(&c.conns, "conns", 0, "gRPC connections shared by the clients (0: one per client)")
	fs.IntVar(&c.keys, "keys", 8, "distinct P-256 keys behind the pre-generated CSRs")
	fs.IntVar(&c.csrs, "csrs", 512, "pre-generated CSRs, cycled through")
	fs.BoolVar(&c.startDev, "start-dev", false, "start `sigil server --dev` in a temporary directory on free ports and bench it")
	fs.StringVar(&c.sigilBin, "sigil-bin", "bin/sigil", "sigil binary for --start-dev")
	fs.StringVar(&c.devDir, "dev-dir", "", "data directory for --start-dev (default: a new temporary directory, removed at the end)")
	fs.BoolVar(&c.pprof, "pprof", false, "with --start-dev: serve pprof on a free loopback port (printed) for `go tool pprof`")
	fs.StringVar(&c.devStorage, "dev-storage", "sqlite", "with --start-dev: the server's storage, sqlite (embedded) or postgres (a throwaway PostgreSQL started for the run, durability on)")
	fs.StringVar(&c.serverLog, "server-log", "", "with --start-dev: write the server's log to this file (default: discarded)")
	fs.BoolVar(&c.hold, "hold", false, "with --start-dev: after the runs, keep the server up until Ctrl-C (for profiling)")
	fs.Var((*multiFlag)(&c.serverArg), "server-arg", "with --start-dev: extra server argument (repeatable)")
	fs.BoolVar(&c.ceiling, "ceiling", true, "measure the in-process ceilings first and report each run as a ratio of its ceiling")
	fs.DurationVar(&c.ceilingDuration, "ceiling-duration", 3*time.Second, "length of each ceiling measurement")
	fs.StringVar(&c.hsm, "hsm", "", "PKCS#11 URI (module-path, token, pin-value): measure the raw token P-256 signing rate; with --start-dev the server's CA key lives there too")
	fs.StringVar(&c.stepca.URL, "stepca-url", "", "step-ca base URL, https://HOST:PORT (target step-ca)")
	fs.StringVar(&c.stepca.Root, "stepca-root", "", "step-ca root certificate (root_ca.crt from stepca-setup)")
	fs.StringVar(&c.stepca.Provisioner, "stepca-provisioner", "", "provisioner.json written by stepca-setup")
	fs.IntVar(&c.stepcaPID, "stepca-pid", 0, "step-ca PID: report its CPU and RSS from /proc")
	fs.BoolVar(&c.json, "json", false, "print the report as JSON instead of tables")
	fs.StringVar(&c.jsonOut, "json-out", "", "also write the JSON report to this file")
	fs.DurationVar(&c.progress, "progress", 5*time.Second, "progress line interval on stderr (0: none)")
	fs.IntVar(&c.leases, "leases", 20_000, "leases: how many leases each batch has (the issue's figure: 1000000)")
	fs.StringVar(&c.leaseSource, "lease-source", bench.LeaseSourceCreds, "leases: mint through "+bench.LeaseSourceCreds+" (an engine mount's role) or "+bench.LeaseSourceAPITokens+" (Sigil's own API tokens with a TTL, leased under auth/token/)")
	fs.StringVar(&c.leaseEngine.Type, "lease-engine", "tokens", "leases: engine type to mount (with --lease-source creds)")
	fs.StringVar(&c.leaseEngine.Mount, "lease-mount", "bench-tokens", "leases: mount path")
	fs.StringVar(&c.leaseEngine.Role, "lease-role", "bench", "leases: role name")
	fs.StringVar(&c.leaseFieldsFlag, "lease-role-fields", "format=opaque ttl=30s max_ttl=1h", "leases: role fields, key=value separated by spaces")
	fs.StringVar(&c.leaseConfigFlag, "lease-engine-config", "", "leases: engine configuration, key=value separated by spaces (empty: none)")
	fs.DurationVar(&c.leaseShortTTL, "lease-ttl", 0, "leases: TTL of the batch measured expiring (0: every lease of it expires together right after minting)")
	fs.DurationVar(&c.leaseLongTTL, "lease-long-ttl", 50*time.Minute, "leases: TTL of the batch alive through the restart (within the role's max_ttl)")
	fs.DurationVar(&c.leaseSettle, "lease-settle", 5*time.Second, "leases: after the restart, sample RSS again this long after ready")
	fs.BoolVar(&c.leaseNoRestart, "lease-no-restart", false, "leases: measure expiry only (no long-TTL batch, no restart)")
	fs.StringVar(&c.metricsURL, "metrics-url", "", "leases against --addr: the server's /metrics URL to count expiries (default with --start-dev: its own)")
	fs.StringVar(&c.acmeHTTPAddr, "acme-http-addr", "", "acme: where the harness answers http-01 (default: a free loopback port; 127.0.0.1:80 for step-ca, which validates on port 80)")
	fs.IntVar(&c.acmeRequestLimit, "acme-request-limit", 0, "acme: lego's OverallRequestLimit (requests/s); lego pauses 1s/limit before each authorization fetch (0: lego's default, 18: a 55 ms pause per enrollment)")
	fs.StringVar(&c.acmeDNSAddr, "acme-dns-addr", "", "acme: where the harness's DNS answers the benchmark zone (default: a free loopback port; give step-ca the same with --resolver)")
	fs.StringVar(&c.pgDSN, "pg-dsn", "", "creds-postgres: superuser URL of a PostgreSQL the server can reach (default: start a throwaway one on 127.0.0.1)")
	fs.StringVar(&c.pgMount, "pg-mount", "bench-db", "creds-postgres: mount path of the postgres engine")
	fs.StringVar(&c.pgRole, "pg-role", "bench", "creds-postgres: role name; each run appends its own random tag (bench-1a2b3c4d) and its database roles start with sigil_<tag>_, so runs side by side never count each other's")
	fs.IntVar(&c.pgSCRAM, "pg-scram-iterations", 0, "creds-postgres: the mount's scram_iterations (0: the engine's default, 4096)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !bench.Implemented(c.scenario) {
		for _, s := range bench.Scenarios() {
			if s == c.scenario {
				return nil, fmt.Errorf("--scenario %s: %w (all are)", s, bench.ErrNotImplemented)
			}
		}
		return nil, fmt.Errorf("--scenario %q: unknown; known: %s", c.scenario, strings.Join(bench.Scenarios(), ", "))
	}
	for t := range strings.SplitSeq(targets, ",") {
		switch t = strings.TrimSpace(t); t {
		case "sigil", "step-ca":
			c.targets = append(c.targets, t)
		default:
			return nil, fmt.Errorf("--targets: unknown target %q (sigil, step-ca)", t)
		}
	}
	var err error
	if c.concurrency, err = parseIntList(conc); err != nil {
		return nil, fmt.Errorf("-c: %w", err)
	}
	if c.leaseEngine.RoleFields, err = bench.ParseFields(c.leaseFieldsFlag); err != nil {
		return nil, fmt.Errorf("--lease-role-fields: %w", err)
	}
	if c.leaseConfigFlag != "" {
		if c.leaseEngine.Config, err = bench.ParseFields(c.leaseConfigFlag); err != nil {
			return nil, fmt.Errorf("--lease-engine-config: %w", err)
		}
	}
	if c.scenario != "sign" && c.scenario != "acme" && (len(c.targets) != 1 || c.targets[0] != "sigil") {
		return nil, fmt.Errorf("--scenario %s runs against sigil only", c.scenario)
	}
	switch {
	case c.scenario == "leases" && c.leases < 1:
		return nil, errors.New("--leases must be at least 1")
	case c.acmeRequestLimit < 0:
		return nil, fmt.Errorf("--acme-request-limit %d: want 0 (lego's default) or a positive rate", c.acmeRequestLimit)
	case c.scenario == "leases" && c.leaseSource != bench.LeaseSourceCreds && c.leaseSource != bench.LeaseSourceAPITokens:
		return nil, fmt.Errorf("--lease-source %q: want %s or %s", c.leaseSource, bench.LeaseSourceCreds, bench.LeaseSourceAPITokens)
	case c.leaseShortTTL < 0 || c.leaseLongTTL < 0 || c.pgSCRAM < 0:
		return nil, errors.New("--lease-ttl, --lease-long-ttl and --pg-scram-iterations must not be negative")
	case c.metricsURL != "" && c.startDev:
		return nil, errors.New("--metrics-url is for a server given with --addr; --start-dev uses its own")
	}
	switch {
	case c.duration < 0 || c.count < 0:
		return nil, errors.New("--duration and --count must not be negative")
	case c.duration == 0 && c.count == 0:
		return nil, errors.New("give --duration or --count")
	case c.rounds < 1:
		return nil, errors.New("--rounds must be at least 1")
	case c.keys < 1 || c.csrs < 1:
		return nil, errors.New("--keys and --csrs must be at least 1")
	case c.profile == "workload" && c.trustDom == "":
		return nil, errors.New("--profile workload needs --trust-domain")
	case c.startDev && (set["addr"] || set["token"] || set["cacert"] || set["server-pid"]):
		return nil, errors.New("--start-dev excludes --addr, --token, --cacert and --server-pid")
	case (c.pprof || c.hold || c.serverLog != "" || len(c.serverArg) > 0 || c.devDir != "" || set["dev-storage"]) && !c.startDev:
		return nil, errors.New("--pprof, --hold, --server-log, --server-arg, --dev-dir and --dev-storage need --start-dev")
	case c.devStorage != "sqlite" && c.devStorage != "postgres":
		return nil, fmt.Errorf("--dev-storage %q: want sqlite or postgres", c.devStorage)
	}
	for _, t := range c.targets {
		switch {
		case t == "sigil" && !c.startDev && c.sigil.Addr == "":
			return nil, errors.New("target sigil needs --addr (or SIGIL_ADDR) or --start-dev")
		case t == "step-ca" && (c.stepca.URL == "" || c.stepca.Root == "" || c.stepca.Provisioner == ""):
			return nil, errors.New("target step-ca needs --stepca-url, --stepca-root and --stepca-provisioner")
		case t == "step-ca" && c.profile != "server":
			return nil, errors.New("target step-ca takes only --profile server (DNS names)")
		}
	}
	return c, nil
}

// parseIntList parses "1,16" into positive integers.
func parseIntList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", f)
		}
		if n < 1 {
			return nil, fmt.Errorf("%d: must be at least 1", n)
		}
		out = append(out, n)
	}
	return out, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "stepca-setup" {
		return stepcaSetup(args[1:], stderr)
	}
	if len(args) > 0 && args[0] == "ha" {
		return haBench(ctx, args[1:], stdout, stderr)
	}
	c, err := parseArgs(args, getenv, stderr)
	if err != nil {
		return err
	}
	return execute(ctx, c, stdout, stderr)
}

func stepcaSetup(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("sigil-bench stepca-setup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory to write the step-ca configuration into")
	addr := fs.String("addr", "127.0.0.1:9443", "address step-ca will listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("stepca-setup: --dir is required")
	}
	return bench.StepCASetup(*dir, *addr)
}
