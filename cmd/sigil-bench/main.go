// Command sigil-bench is Sigil's load harness: it drives a running Sigil
// (or one it starts with --start-dev, or a step-ca for the side-by-side
// comparison) over its real interfaces with N concurrent clients, and
// reports throughput, latency percentiles, errors, server CPU and RSS, and
// each figure as a ratio of the in-process ceiling measured in the same run.
//
//	sigil-bench [flags]                       run scenarios
//	sigil-bench stepca-setup --dir D --addr A write a step-ca configuration
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
	fs.StringVar(&c.scenario, "scenario", "sign", "scenario: "+strings.Join(bench.Scenarios(), ", ")+" (only sign is implemented yet)")
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
				return nil, fmt.Errorf("--scenario %s: %w (only sign is)", s, bench.ErrNotImplemented)
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
	case (c.pprof || c.hold || c.serverLog != "" || len(c.serverArg) > 0 || c.devDir != "") && !c.startDev:
		return nil, errors.New("--pprof, --hold, --server-log, --server-arg and --dev-dir need --start-dev")
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
