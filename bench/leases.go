package bench

import (
	"bufio"
	"context"
	"crypto/hpke"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/envelope"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// Where the leases scenario gets its leases from.
const (
	// LeaseSourceCreds mints through EngineService.Creds on an engine
	// mount's role: the real path of every dynamic secret.
	LeaseSourceCreds = "creds"
	// LeaseSourceAPITokens creates Sigil's own API tokens with a TTL
	// (TokenService.Create); each is tracked by a lease under auth/token/
	// whose revocation deletes the token. A stand-in for when no cheap
	// engine is mounted.
	LeaseSourceAPITokens = "api-tokens"
)

// apiTokenLeasePrefix is where API tokens' leases live (server/tokenlease.go).
const apiTokenLeasePrefix = "auth/token/"

// Targets of the issue for 1,000,000 active leases on 2 cores.
const (
	TargetReady        = 2 * time.Second
	TargetRSS          = 300 << 20
	TargetExpiryRate   = 5000.0
	TargetExpiryEngine = "tokens"
)

// EngineSetup is an engine mount the harness prepares on the server.
type EngineSetup struct {
	Type, Mount string
	Config      map[string]string // engine configuration (nil: none)
	Role        string
	RoleFields  map[string]string
}

// SetupEngine enables the mount (reusing one of the same type that exists),
// configures it when Config is set and writes the role.
func SetupEngine(ctx context.Context, cc *grpc.ClientConn, s EngineSetup) error {
	ec := sigilv1.NewEngineServiceClient(cc)
	_, err := ec.Enable(ctx, &sigilv1.EnableEngineRequest{Type: s.Type, Mount: s.Mount})
	if status.Code(err) == codes.AlreadyExists {
		list, lerr := ec.List(ctx, &sigilv1.ListEnginesRequest{})
		if lerr != nil {
			return fmt.Errorf("list engines: %w", lerr)
		}
		for _, m := range list.GetEngines() {
			if m.GetMount() == s.Mount && m.GetType() != s.Type {
				return fmt.Errorf("mount %s exists with type %s, not %s", s.Mount, m.GetType(), s.Type)
			}
		}
		err = nil
	}
	if err != nil {
		return fmt.Errorf("enable %s engine at %s: %w", s.Type, s.Mount, err)
	}
	if s.Config != nil {
		if _, err := ec.Configure(ctx, &sigilv1.ConfigureEngineRequest{Mount: s.Mount, Config: s.Config}); err != nil {
			return fmt.Errorf("configure %s: %w", s.Mount, err)
		}
	}
	if _, err := ec.WriteRole(ctx, &sigilv1.WriteRoleRequest{Mount: s.Mount, Role: s.Role, Fields: s.RoleFields}); err != nil {
		return fmt.Errorf("write role %s/%s: %w", s.Mount, s.Role, err)
	}
	return nil
}

// ParseFields parses "k=v k=v" (or comma-separated) role or config fields.
func ParseFields(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' }) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("field %q is not key=value", f)
		}
		out[k] = v
	}
	return out, nil
}

// recipientKey is one client's envelope key pair.
type recipientKey struct {
	priv hpke.PrivateKey
	pub  *sigilv1.Recipient
}

func newRecipientKeys(n int) ([]recipientKey, error) {
	keys := make([]recipientKey, n)
	for i := range keys {
		priv, r, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
		if err != nil {
			return nil, fmt.Errorf("recipient key: %w", err)
		}
		keys[i] = recipientKey{priv: priv, pub: &sigilv1.Recipient{Kem: uint32(r.KEM), PublicKey: r.PublicKey}}
	}
	return keys, nil
}

// openData opens a sealed secret and checks it carries a non-empty field.
func openData(priv hpke.PrivateKey, wire []byte, bound string) (map[string]string, error) {
	var en envelope.Envelope
	if err := en.UnmarshalBinary(wire); err != nil {
		return nil, fmt.Errorf("malformed envelope: %w", err)
	}
	data, err := envelope.OpenData(priv, &en, bound)
	if err != nil {
		return nil, fmt.Errorf("open envelope: %w", err)
	}
	for _, v := range data {
		if v != "" {
			return data, nil
		}
	}
	return nil, errors.New("the secret has no field")
}

// LeaseMintOptions shape a LeaseMint scenario.
type LeaseMintOptions struct {
	Name        string // the scenario name in the report
	Source      string // LeaseSourceCreds or LeaseSourceAPITokens
	Mount, Role string // for LeaseSourceCreds
	// TTL gives each new lease's TTL (rounded up to whole seconds).
	TTL func() time.Duration
	// VerifyEvery opens one envelope in VerifyEvery (0 or 1: every one).
	// Opening costs the client ≈0.1 ms of CPU on the server's machine.
	VerifyEvery int
	// Keep keeps the ids of the first Keep leases minted.
	Keep int
}

// LeaseMint is a scenario that mints one lease per operation.
type LeaseMint struct {
	o      LeaseMintOptions
	conns  []*grpc.ClientConn
	engs   []sigilv1.EngineServiceClient
	toks   []sigilv1.TokenServiceClient
	keys   []recipientKey
	n      atomic.Int64
	mu     sync.Mutex
	kept   []string
	maxExp atomic.Int64 // latest expiry requested, unix nanoseconds
}

// NewLeaseMint dials one connection per worker (at most conns).
func NewLeaseMint(c SigilConn, o LeaseMintOptions, workers, conns int) (*LeaseMint, error) {
	if o.Source != LeaseSourceCreds && o.Source != LeaseSourceAPITokens {
		return nil, fmt.Errorf("lease source %q: want %s or %s", o.Source, LeaseSourceCreds, LeaseSourceAPITokens)
	}
	if o.TTL == nil {
		return nil, errors.New("lease mint: no TTL")
	}
	o.VerifyEvery = max(o.VerifyEvery, 1)
	keys, err := newRecipientKeys(workers)
	if err != nil {
		return nil, err
	}
	s := &LeaseMint{o: o, keys: keys}
	if s.conns, err = dialPool(c, workers, conns); err != nil {
		return nil, err
	}
	for _, cc := range s.conns {
		s.engs = append(s.engs, sigilv1.NewEngineServiceClient(cc))
		s.toks = append(s.toks, sigilv1.NewTokenServiceClient(cc))
	}
	if o.Source == LeaseSourceAPITokens && len(s.conns) > 0 {
		// A token's policies must exist: write the one the tokens carry.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := sigilv1.NewPolicyServiceClient(s.conns[0]).Write(ctx, &sigilv1.WritePolicyRequest{Name: "bench",
			Document: []byte("rules:\n  - path: \"ca/certs\"\n    capabilities: [list]\n")}); err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("write the bench policy: %w", err)
		}
	}
	return s, nil
}

func (s *LeaseMint) Name() string   { return s.o.Name }
func (s *LeaseMint) Target() string { return "sigil" }

func (s *LeaseMint) Do(ctx context.Context, worker int) error {
	ttl := s.o.TTL()
	secs := int64(math.Ceil(ttl.Seconds()))
	secs = max(secs, 1)
	key := s.keys[worker]
	verify := s.n.Add(1)%int64(s.o.VerifyEvery) == 0
	var id string
	switch s.o.Source {
	case LeaseSourceCreds:
		resp, err := s.engs[worker%len(s.engs)].Creds(ctx, &sigilv1.CredsRequest{Mount: s.o.Mount, Role: s.o.Role, TtlSeconds: secs, Recipient: key.pub})
		if err != nil {
			return fmt.Errorf("creds %s/%s: %w", s.o.Mount, s.o.Role, err)
		}
		id = resp.GetLeaseId()
		if verify {
			if _, err := openData(key.priv, resp.GetEnvelope(), id); err != nil {
				return fmt.Errorf("creds %s: %w", id, err)
			}
		}
	default:
		resp, err := s.toks[worker%len(s.toks)].Create(ctx, &sigilv1.CreateTokenRequest{Policies: []string{"bench"}, TtlSeconds: secs, Recipient: key.pub})
		if err != nil {
			return fmt.Errorf("create token: %w", err)
		}
		tid := resp.GetInfo().GetId()
		id = apiTokenLeasePrefix + tid
		if verify {
			data, err := openData(key.priv, resp.GetEnvelope(), tid)
			if err != nil {
				return fmt.Errorf("token %s: %w", tid, err)
			}
			if data["token"] == "" {
				return fmt.Errorf("token %s: no token in the envelope", tid)
			}
		}
	}
	exp := time.Now().Add(time.Duration(secs) * time.Second).UnixNano()
	for {
		cur := s.maxExp.Load()
		if exp <= cur || s.maxExp.CompareAndSwap(cur, exp) {
			break
		}
	}
	if s.o.Keep > 0 {
		s.mu.Lock()
		if len(s.kept) < s.o.Keep {
			s.kept = append(s.kept, id)
		}
		s.mu.Unlock()
	}
	return nil
}

// Kept returns the ids kept (Options.Keep).
func (s *LeaseMint) Kept() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.kept...)
}

// LatestExpiry is the latest expiry of a lease minted so far.
func (s *LeaseMint) LatestExpiry() time.Time { return time.Unix(0, s.maxExp.Load()) }

func (s *LeaseMint) Close() error {
	return closeAll(s.conns)
}

// ---- counting expiries

// expiryCounter reads a number that grows by one per lease the server
// revokes at expiry.
type expiryCounter interface {
	read(ctx context.Context) (int64, error)
	what() string
	interval() time.Duration // between samples
}

// metricsCounter scrapes sigil_leases_expired_total from /metrics.
type metricsCounter struct {
	url    string
	client *http.Client
}

// NewHTTPSClient trusts caFile (PEM) if given, else the system roots.
func NewHTTPSClient(caFile string) (*http.Client, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pemData, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("%s: no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, MaxIdleConns: 2}}, nil
}

const expiredMetric = "sigil_leases_expired_total"

func (m metricsCounter) what() string { return expiredMetric + " at " + m.url }

// interval: a scrape costs the server about a millisecond.
func (metricsCounter) interval() time.Duration { return 100 * time.Millisecond }

func (m metricsCounter) read(ctx context.Context) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("metrics: %s", resp.Status)
	}
	return parseCounter(resp.Body, expiredMetric)
}

// parseCounter finds an unlabelled sample of name in the Prometheus text
// format.
func parseCounter(r io.Reader, name string) (int64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), name+" ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return 0, fmt.Errorf("metrics: %s: %w", name, err)
		}
		return int64(f), nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("metrics: %w", err)
	}
	return 0, fmt.Errorf("metrics: no %s sample", name)
}

// activeCounter counts down the mount's active leases (EngineService.List):
// it returns minus the count, which grows as leases expire.
type activeCounter struct {
	ec    sigilv1.EngineServiceClient
	mount string
}

func (a activeCounter) what() string {
	return "active leases of mount " + a.mount + " (EngineService.List)"
}

// interval: each sample counts the mount's leases in storage.
func (activeCounter) interval() time.Duration { return 500 * time.Millisecond }

func (a activeCounter) read(ctx context.Context) (int64, error) {
	n, err := activeLeases(ctx, a.ec, a.mount)
	return -n, err
}

func activeLeases(ctx context.Context, ec sigilv1.EngineServiceClient, mount string) (int64, error) {
	list, err := ec.List(ctx, &sigilv1.ListEnginesRequest{})
	if err != nil {
		return 0, fmt.Errorf("list engines: %w", err)
	}
	for _, m := range list.GetEngines() {
		if m.GetMount() == mount {
			return m.GetActiveLeases(), nil
		}
	}
	return 0, fmt.Errorf("mount %s not listed", mount)
}

// countActive pages through the active leases under prefix.
func countActive(ctx context.Context, lc sigilv1.LeaseServiceClient, prefix string) (int64, error) {
	var n int64
	page := ""
	for {
		resp, err := lc.List(ctx, &sigilv1.ListLeasesRequest{Prefix: prefix, PageToken: page, PageSize: 1000})
		if err != nil {
			return n, fmt.Errorf("list leases: %w", err)
		}
		n += int64(len(resp.GetLeases()))
		if page = resp.GetNextPageToken(); page == "" {
			return n, nil
		}
	}
}

// ExpiryFigures is what the expiry phase measured.
type ExpiryFigures struct {
	Leases  int    `json:"leases"`
	Revoked int64  `json:"revoked"`
	Source  string `json:"counted_by"`
	// Rate is revocations per second from the first revocation observed
	// to the last.
	Rate    float64       `json:"revocations_per_s"`
	Elapsed time.Duration `json:"elapsed_ns"`
	// DueToDone is from the latest expiry to the last revocation: Rate's
	// window plus the worker's poll interval and the harness's sampling.
	DueToDone time.Duration `json:"due_to_done_ns"`
	// Overlap is set when leases began expiring before minting ended, so
	// the rate was measured under minting load.
	Overlap     bool       `json:"overlap_with_minting,omitempty"`
	Server      *ProcUsage `json:"server,omitempty"`
	Interrupted bool       `json:"interrupted,omitempty"`
	TimedOut    bool       `json:"timed_out,omitempty"`
	// Checked counts sampled leases looked up afterwards and found revoked.
	Checked int `json:"checked_revoked"`
}

// watchExpiry samples c until it has grown by n over base, or until
// deadline, and measures the rate.
func watchExpiry(ctx context.Context, c expiryCounter, base int64, n int, due, deadline time.Time, pid int, progress io.Writer, every time.Duration) (*ExpiryFigures, error) {
	f := &ExpiryFigures{Leases: n, Source: c.what()}
	var before ProcSample
	if pid != 0 {
		var err error
		if before, err = ReadProc(pid); err != nil {
			return nil, err
		}
	}
	sample := c.interval()
	var (
		firstAt, lastAt time.Time
		lastV           int64
		lastPrint       = time.Now()
		printedV        int64
	)
	for {
		if ctx.Err() != nil {
			f.Interrupted = true
			break
		}
		if time.Now().After(deadline) {
			f.TimedOut = true
			break
		}
		v, err := c.read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				f.Interrupted = true
				break
			}
			return nil, err
		}
		now := time.Now()
		got := v - base
		if got > 0 && firstAt.IsZero() {
			firstAt = now
		}
		if got > lastV {
			lastAt, lastV = now, got
		}
		if progress != nil && every > 0 && now.Sub(lastPrint) >= every {
			fmt.Fprintf(progress, "  expiry: %8d of %d revoked  %8.0f/s now\n", got, n, Rate(int(got-printedV), now.Sub(lastPrint)))
			lastPrint, printedV = now, got
		}
		if got >= int64(n) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(sample):
		}
	}
	f.Revoked = lastV
	if !firstAt.IsZero() && lastAt.After(firstAt) {
		// The first sample already holds revocations made before it: count
		// from the sample before (≈ one interval earlier) to be fair.
		f.Elapsed = lastAt.Sub(firstAt) + sample
		f.Rate = float64(lastV) / f.Elapsed.Seconds()
	}
	if !lastAt.IsZero() {
		f.DueToDone = lastAt.Sub(due)
	}
	if pid != 0 {
		if after, err := ReadProc(pid); err == nil {
			u := Usage(before, after)
			f.Server = &u
		}
	}
	return f, nil
}

// RestartFigures is what the restart phase measured.
type RestartFigures struct {
	ActiveLeases int64         `json:"active_leases"`
	ToReady      time.Duration `json:"to_ready_ns"` // process start to the first /readyz 200
	RSSReady     int64         `json:"rss_ready_bytes"`
	RSSSettled   int64         `json:"rss_settled_bytes"` // a few seconds after ready
	PeakRSS      int64         `json:"peak_rss_bytes"`
}

// TargetCheck is one target of the issue, marked against what was measured.
type TargetCheck struct {
	Target string `json:"target"`
	Got    string `json:"got"`
	Met    string `json:"met"` // "met", "not met", or why it does not apply
}

// LeasesReport is the leases scenario's outcome.
type LeasesReport struct {
	Source  string          `json:"source"`
	Engine  string          `json:"engine"` // type and mount/role, or "api tokens"
	Leases  int             `json:"leases"`
	Clients int             `json:"clients"`
	Expiry  *ExpiryFigures  `json:"expiry,omitempty"`
	Restart *RestartFigures `json:"restart,omitempty"`
	Targets []TargetCheck   `json:"targets,omitempty"`
}

func (r *LeasesReport) writeTable(w io.Writer) error {
	fmt.Fprintf(w, "\nleases: %d through %s (%s), %d clients\n", r.Leases, r.Engine, r.Source, r.Clients)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	if e := r.Expiry; e != nil {
		state := ""
		switch {
		case e.Interrupted:
			state = " (interrupted)"
		case e.TimedOut:
			state = " (timed out)"
		}
		fmt.Fprintf(tw, "expiry%s\t%d of %d revoked, %.0f revocations/s over %v (due → all revoked %v)\t\n", state,
			e.Revoked, e.Leases, e.Rate, e.Elapsed.Round(time.Millisecond), e.DueToDone.Round(time.Millisecond))
		if e.Server != nil {
			fmt.Fprintf(tw, "  server during expiry\t%.2f CPU cores, RSS %s MiB (peak %s MiB)\t\n", e.Server.CPUCores, mib(e.Server.RSS), mib(e.Server.PeakRSS))
		}
		fmt.Fprintf(tw, "  counted by\t%s; %d sampled leases looked up revoked\t\n", e.Source, e.Checked)
		if e.Overlap {
			fmt.Fprintf(tw, "  warning\tleases began expiring before minting ended: the rate was measured under minting load\t\n")
		}
		if e.Elapsed > 0 && e.Elapsed < 5*time.Second {
			fmt.Fprintf(tw, "  warning\tunder 5 s of revocations: whole-second TTLs spread the expiries over about a second and the worker polls each second when idle, so this rate is a lower bound; use more leases\t\n")
		}
	}
	if x := r.Restart; x != nil {
		fmt.Fprintf(tw, "restart\t%d active leases: ready %v after process start, RSS %s MiB at ready, %s MiB settled (peak %s MiB)\t\n",
			x.ActiveLeases, x.ToReady.Round(time.Millisecond), mib(x.RSSReady), mib(x.RSSSettled), mib(x.PeakRSS))
	}
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "target\t%s: %s — %s\t\n", t.Target, t.Got, t.Met)
	}
	return tw.Flush()
}

// checkTargets marks the targets (they are stated for 1,000,000
// leases and, for expiry, the tokens engine).
func (r *LeasesReport) checkTargets(engineType string) {
	r.Targets = nil
	scale := ""
	if r.Leases < 1_000_000 {
		scale = fmt.Sprintf(" (measured with %d leases; the target is for 1,000,000)", r.Leases)
	}
	mark := func(ok bool) string {
		if ok {
			return "met" + scale
		}
		return "not met" + scale
	}
	if e := r.Expiry; e != nil && !e.Interrupted {
		got := fmt.Sprintf("%.0f/s", e.Rate)
		m := mark(e.Rate >= TargetExpiryRate && !e.TimedOut)
		if r.Source != LeaseSourceCreds || engineType != TargetExpiryEngine {
			m = "not applicable: the target is for the " + TargetExpiryEngine + " engine, this ran " + r.Engine
		}
		r.Targets = append(r.Targets, TargetCheck{Target: fmt.Sprintf("expiry ≥ %.0f revocations/s", TargetExpiryRate), Got: got, Met: m})
	}
	if x := r.Restart; x != nil {
		r.Targets = append(r.Targets,
			TargetCheck{Target: "ready ≤ 2 s after restart", Got: x.ToReady.Round(time.Millisecond).String(), Met: mark(x.ToReady <= TargetReady)},
			TargetCheck{Target: "server RSS ≤ 300 MB", Got: mib(max(x.RSSReady, x.RSSSettled)) + " MiB", Met: mark(max(x.RSSReady, x.RSSSettled) <= TargetRSS)})
	}
}

// LeasesOptions configure RunLeases.
type LeasesOptions struct {
	Conn SigilConn
	PID  int // the server's, for CPU and RSS (0: none)
	// Dev is the dev server the harness started; with it the restart
	// phase runs (restarted with DevOptions) and metrics come from its
	// HTTPS listener. Without it MetricsURL (or, for creds, the mount's
	// active lease count) measures expiry and there is no restart.
	Dev        *DevServer
	DevOptions DevOptions
	MetricsURL string

	Source string
	Setup  EngineSetup // the mount and role (LeaseSourceCreds)
	Leases int
	// Clients mint concurrently, over Conns connections.
	Clients, Conns int
	// ShortTTL is the first batch's TTL; 0 makes every lease of it expire
	// together shortly after minting ends (from a calibrated mint rate).
	ShortTTL time.Duration
	// LongTTL is the second batch's, alive through the restart.
	LongTTL time.Duration
	// Settle is how long after ready the RSS is sampled again.
	Settle time.Duration
	// NoRestart skips the long-TTL batch and the restart (a quicker
	// expiry-only run).
	NoRestart bool

	Progress      io.Writer
	ProgressEvery time.Duration
	Logf          func(format string, a ...any)
}

// RunLeases runs the leases scenario: mint a calibration batch with the
// long TTL, mint Leases with a short TTL, measure the expiry rate, mint
// the rest of the long-TTL batch (Leases active in all), restart the dev
// server and measure time to ready and RSS. It returns the report, the
// mint runs, and the dev server now running (the restarted one), which
// the caller stops. On Ctrl-C it returns what was measured so far.
func RunLeases(ctx context.Context, o LeasesOptions) (rep *LeasesReport, runs []*Result, dev *DevServer, err error) {
	dev = o.Dev
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Leases < 1 || o.Clients < 1 {
		return nil, nil, dev, errors.New("leases: need at least 1 lease and 1 client")
	}
	if o.LongTTL <= 0 {
		o.LongTTL = 50 * time.Minute
	}
	rep = &LeasesReport{Source: o.Source, Leases: o.Leases, Clients: o.Clients}
	prefix := apiTokenLeasePrefix
	switch o.Source {
	case LeaseSourceCreds:
		rep.Engine = fmt.Sprintf("%s engine at %s, role %s", o.Setup.Type, o.Setup.Mount, o.Setup.Role)
		prefix = o.Setup.Mount + "/"
	case LeaseSourceAPITokens:
		rep.Engine = "API tokens (leases under auth/token/)"
	default:
		return nil, nil, dev, fmt.Errorf("lease source %q: want %s or %s", o.Source, LeaseSourceCreds, LeaseSourceAPITokens)
	}
	defer rep.checkTargets(o.Setup.Type)
	cc, err := o.Conn.Dial()
	if err != nil {
		return rep, nil, dev, err
	}
	defer cc.Close()
	if o.Source == LeaseSourceCreds {
		if err := SetupEngine(ctx, cc, o.Setup); err != nil {
			return rep, nil, dev, err
		}
	}
	counter, err := o.counter(cc, dev)
	if err != nil {
		return rep, nil, dev, err
	}

	mint := func(name string, n int, ttl func() time.Duration, keep int) (*Result, *LeaseMint, error) {
		sc, err := NewLeaseMint(o.Conn, LeaseMintOptions{Name: name, Source: o.Source, Mount: o.Setup.Mount, Role: o.Setup.Role,
			TTL: ttl, VerifyEvery: 16, Keep: keep}, o.Clients, max(o.Conns, 1))
		if err != nil {
			return nil, nil, err
		}
		defer sc.Close()
		o.Logf("run: %s, %d leases, %d clients (load %s)", name, n, o.Clients, LoadAvg())
		res, err := Run(ctx, sc, Options{Concurrency: o.Clients, Count: n, Progress: o.Progress, ProgressEvery: o.ProgressEvery, ServerPID: o.PID})
		if err != nil {
			return nil, nil, err
		}
		runs = append(runs, res)
		if res.OK == 0 && res.Errors > 0 {
			return res, sc, fmt.Errorf("%s: every mint failed, first: %s", name, strings.Join(res.FirstErrors, "; "))
		}
		return res, sc, nil
	}
	long := func() time.Duration { return o.LongTTL }

	// 1. Calibration: part of the long-TTL batch, it also gives the mint
	// rate from which the short batch's common expiry is set.
	calib := min(o.Leases, max(200, min(5000, o.Leases/50)))
	res, _, err := mint("leases: mint, long TTL (1/2)", calib, long, 0)
	if err != nil || res.Interrupted {
		return rep, runs, dev, err
	}
	rate := max(res.Throughput, 1)

	// 2. The short-TTL batch, all due together right after it is minted.
	// The counter's base is read first: with a short TTL some may expire
	// while the batch is still being minted.
	base, err := counter.read(ctx)
	if err != nil {
		return rep, runs, dev, err
	}
	ttl := func() time.Duration { return o.ShortTTL }
	var due time.Time
	if o.ShortTTL <= 0 {
		due = time.Now().Add(time.Duration(1.2*float64(o.Leases)/rate*float64(time.Second)) + 10*time.Second)
		o.Logf("short TTL: every lease of the next batch expires at %s (mint rate so far %.0f/s)", due.Format(time.TimeOnly), rate)
		ttl = func() time.Duration { return max(time.Until(due), time.Second) }
	}
	res, sc, err := mint("leases: mint, short TTL", o.Leases, ttl, 32)
	if err != nil || res.Interrupted {
		return rep, runs, dev, err
	}
	minted := res.OK
	mintEnd := time.Now()
	if _, ok := counter.(activeCounter); ok {
		base -= int64(minted) // it counts the active leases down
	}
	latest := sc.LatestExpiry()
	if due.IsZero() || latest.After(due) {
		due = latest
	}

	// 3. Expiry: from due until all are revoked (or a generous deadline).
	o.Logf("expiry: waiting for %d leases due by %s (counted by %s)", minted, due.Format(time.TimeOnly), counter.what())
	deadline := due.Add(time.Duration(float64(minted)/200*float64(time.Second)) + 2*time.Minute)
	if d := time.Until(due); d > 0 {
		select {
		case <-ctx.Done():
			return rep, runs, dev, nil
		case <-time.After(max(d-2*time.Second, 0)):
		}
	}
	rep.Expiry, err = watchExpiry(ctx, counter, base, minted, due, deadline, o.currentPID(dev), o.Progress, o.ProgressEvery)
	if err != nil {
		return rep, runs, dev, err
	}
	rep.Expiry.Overlap = due.Before(mintEnd)
	lc := sigilv1.NewLeaseServiceClient(cc)
	for _, id := range sc.Kept() {
		l, err := lc.Lookup(ctx, &sigilv1.LookupLeaseRequest{Id: id})
		if err != nil {
			if status.Code(err) == codes.NotFound {
				rep.Expiry.Checked++ // pruned: revoked long enough ago
				continue
			}
			return rep, runs, dev, fmt.Errorf("look up %s: %w", id, err)
		}
		if l.GetState() != "revoked" {
			return rep, runs, dev, fmt.Errorf("lease %s is %s after expiry", id, l.GetState())
		}
		rep.Expiry.Checked++
	}
	if rep.Expiry.Interrupted || ctx.Err() != nil {
		return rep, runs, dev, nil
	}

	if o.NoRestart {
		return rep, runs, dev, nil
	}

	// 4. The rest of the long-TTL batch.
	if rest := o.Leases - calib; rest > 0 {
		res, _, err = mint("leases: mint, long TTL (2/2)", rest, long, 0)
		if err != nil || res.Interrupted {
			return rep, runs, dev, err
		}
	}

	// 5. Restart with them.
	if dev == nil {
		return rep, runs, dev, nil
	}
	rep.Restart, dev, err = restartMeasure(ctx, dev, o)
	if err != nil || rep.Restart == nil {
		return rep, runs, dev, err
	}
	cc2, err := dev.Conn.Dial()
	if err != nil {
		return rep, runs, dev, err
	}
	defer cc2.Close()
	if o.Source == LeaseSourceCreds {
		rep.Restart.ActiveLeases, err = activeLeases(ctx, sigilv1.NewEngineServiceClient(cc2), o.Setup.Mount)
	} else {
		rep.Restart.ActiveLeases, err = countActive(ctx, sigilv1.NewLeaseServiceClient(cc2), prefix)
	}
	return rep, runs, dev, err
}

func (o *LeasesOptions) currentPID(dev *DevServer) int {
	if dev != nil {
		return dev.PID
	}
	return o.PID
}

// counter picks how expiries are counted: the server's metrics when they
// can be reached, else the mount's active lease count.
func (o *LeasesOptions) counter(cc *grpc.ClientConn, dev *DevServer) (expiryCounter, error) {
	url := o.MetricsURL
	if url == "" && dev != nil {
		url = "https://" + dev.HTTPSAddr + "/metrics"
	}
	if url != "" {
		client, err := NewHTTPSClient(o.Conn.CACert)
		if err != nil {
			return nil, err
		}
		return metricsCounter{url: url, client: client}, nil
	}
	if o.Source == LeaseSourceCreds {
		return activeCounter{ec: sigilv1.NewEngineServiceClient(cc), mount: o.Setup.Mount}, nil
	}
	return nil, errors.New("leases: API-token leases are counted through /metrics: give --metrics-url or use --start-dev")
}

// restartMeasure stops the dev server, starts it again on its data and
// measures time from process start to the first /readyz 200 and RSS.
func restartMeasure(ctx context.Context, dev *DevServer, o LeasesOptions) (*RestartFigures, *DevServer, error) {
	o.Logf("restart: stopping the server (pid %d)", dev.PID)
	if err := dev.Stop(); err != nil {
		return nil, dev, fmt.Errorf("stop for restart: %w", err)
	}
	nd, err := StartDev(ctx, o.DevOptions)
	if err != nil {
		return nil, dev, fmt.Errorf("restart: %w", err)
	}
	client, err := NewHTTPSClient(nd.Conn.CACert)
	if err != nil {
		return nil, nd, err
	}
	client.Timeout = time.Second
	url := "https://" + nd.HTTPSAddr + "/readyz"
	deadline := time.Now().Add(time.Minute)
	var ready time.Time
	for ready.IsZero() {
		if ctx.Err() != nil {
			return nil, nd, nil
		}
		if time.Now().After(deadline) {
			return nil, nd, fmt.Errorf("restart: %s not ready within a minute", url)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ready = time.Now()
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	f := &RestartFigures{ToReady: ready.Sub(nd.Started)}
	at, err := ReadProc(nd.PID)
	if err != nil {
		return nil, nd, err
	}
	f.RSSReady = at.RSS
	settle := o.Settle
	if settle <= 0 {
		settle = 5 * time.Second
	}
	o.Logf("restart: ready %v after start; sampling RSS again in %v", f.ToReady.Round(time.Millisecond), settle)
	select {
	case <-ctx.Done():
	case <-time.After(settle):
	}
	later, err := ReadProc(nd.PID)
	if err != nil {
		return nil, nd, err
	}
	f.RSSSettled, f.PeakRSS = later.RSS, later.PeakRSS
	return f, nd, nil
}
