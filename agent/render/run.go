package render

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sort"
	"text/template"
	"time"
)

// Timing of retries and of the work done on exit.
const (
	minDelay      = time.Second
	maxBackoff    = time.Minute
	cleanupWithin = 15 * time.Second
)

// ExitError is returned by Run when the exec command ended by itself: Code
// is its exit status (128+N when signal N killed it), to be the exit
// status of whatever ran it.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("command exited with status %d", e.Code) }

// Run renders the templates and the exec environment, keeps the secrets
// behind them current and reloads what uses them, until ctx ends. With
// exec, it returns *ExitError with the command's status both when the
// command exits by itself and when ctx ends (the command is then sent
// SIGTERM, or the signal that ended ctx, and waited for). Leases are renewed at
// two thirds of their TTL; a refused renewal, or a lease near its max
// TTL, mints a new one and renders again. A render that fails (a missing
// secret, a server outage) keeps the old file, is logged and is retried
// with backoff. On return it revokes its leases unless revoke_on_exit is
// false and removes the files marked remove_on_exit.
//
// Run returns an error without rendering anything when the configuration
// cannot work (a template that does not parse, a disk-backed destination
// without allow_disk), and, with exec, when the environment cannot be
// rendered before the command starts.
func Run(ctx context.Context, cfg Config, src Source, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r, err := newRunner(cfg, src, log)
	if err != nil {
		return err
	}
	return r.run(ctx)
}

// target is one template: a file or one environment variable.
type target struct {
	name    string // for logs: the file path or "env NAME"
	tmpl    *template.Template
	file    *fileTarget
	envName string

	deps     []secretRef // what the last render used
	out      []byte      // the last output delivered
	ok       bool        // out is current
	tried    bool
	dirty    bool
	failures int
	retryAt  time.Time
}

// secret is a fetched secret and when to look at it again.
type secret struct {
	ref     secretRef
	data    map[string]string
	lease   *Lease
	version int64     // kv
	expires time.Time // lease expiry as last known
	next    time.Time // zero: nothing to do
	// refetch: at next, fetch anew (kv refresh, cert rotation, lease at
	// max TTL or not renewable) instead of renewing the lease.
	refetch  bool
	failures int
}

type runner struct {
	cfg        Config
	src        Source
	log        *slog.Logger
	defaultDir string
	targets    []*target
	secrets    map[secretRef]*secret
	childEnv   []string
	sup        *supervisor
}

func newRunner(cfg Config, src Source, log *slog.Logger) (*runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if src == nil {
		return nil, errors.New("render: no source")
	}
	r := &runner{cfg: cfg, src: src, log: log, defaultDir: DefaultDir(os.Getenv), secrets: map[secretRef]*secret{}, childEnv: childEnv()}
	for i := range cfg.Templates {
		t := &cfg.Templates[i]
		text := t.Contents
		if t.Source != "" {
			var err error
			if text, err = readSource(t.Source); err != nil {
				return nil, fmt.Errorf("templates[%d] (%s): %w", i, t.Destination, err)
			}
		}
		ft, err := resolveFile(t, r.defaultDir)
		if err != nil {
			return nil, fmt.Errorf("templates[%d] (%s): %w", i, t.Destination, err)
		}
		tmpl, err := parseTemplate(ft.path, text)
		if err != nil {
			return nil, fmt.Errorf("templates[%d] (%s): %w", i, t.Destination, err)
		}
		if err := ft.prepare(r.defaultDir, cfg.AllowDisk); err != nil {
			return nil, fmt.Errorf("templates[%d] (%s): %w", i, t.Destination, err)
		}
		r.targets = append(r.targets, &target{name: ft.path, tmpl: tmpl, file: ft})
	}
	if cfg.Exec != nil {
		if len(cfg.Exec.Command) == 0 {
			return nil, errors.New("exec: command is required")
		}
		names := make([]string, 0, len(cfg.Exec.Env))
		for n := range cfg.Exec.Env {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			tmpl, err := parseTemplate("env "+n, cfg.Exec.Env[n])
			if err != nil {
				return nil, fmt.Errorf("exec env %s: %w", n, err)
			}
			r.targets = append(r.targets, &target{name: "env " + n, tmpl: tmpl, envName: n})
		}
		r.sup = newSupervisor(cfg.Exec, log)
	}
	return r, nil
}

func (r *runner) run(ctx context.Context) (err error) {
	defer func() { r.cleanup() }()
	r.renderAll(ctx)
	if r.sup != nil {
		for _, t := range r.targets {
			if t.envName != "" && !t.ok {
				return fmt.Errorf("exec: the environment could not be rendered (%s failed); not starting %s", t.name, r.cfg.Exec.Command[0])
			}
		}
		if err := r.sup.start(r.execEnv()); err != nil {
			return err
		}
		defer r.sup.stopForwarding()
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wake := r.nextWake()
		timer.Reset(max(time.Until(wake), 0))
		select {
		case <-ctx.Done():
			if r.sup != nil {
				return &ExitError{Code: r.sup.shutdown()}
			}
			return nil
		case code := <-r.sup.exited():
			r.log.Info("command exited", "command", r.cfg.Exec.Command[0], "status", code)
			return &ExitError{Code: code}
		case sig := <-r.sup.signals():
			r.sup.forward(sig)
		case <-timer.C:
		}
		r.tick(ctx)
	}
}

// tick handles the secrets that are due, renders what they changed and
// retries failed renders that are due.
func (r *runner) tick(ctx context.Context) {
	now := time.Now()
	var due []*secret
	for _, s := range r.secrets {
		if !s.next.IsZero() && !s.next.After(now) {
			due = append(due, s)
		}
	}
	for _, s := range due {
		if r.advance(ctx, s) {
			r.markDependents(s.ref)
		}
	}
	r.renderAll(ctx)
}

func (r *runner) markDependents(ref secretRef) {
	for _, t := range r.targets {
		for _, d := range t.deps {
			if d == ref {
				t.dirty = true
			}
		}
	}
}

// nextWake is the earliest time something is due.
func (r *runner) nextWake() time.Time {
	wake := time.Now().Add(time.Hour)
	for _, s := range r.secrets {
		if !s.next.IsZero() && s.next.Before(wake) {
			wake = s.next
		}
	}
	for _, t := range r.targets {
		if t.failures > 0 && t.retryAt.Before(wake) {
			wake = t.retryAt
		}
	}
	return wake
}

// get is the templates' lookup: the held secret, or a fetched one.
func (r *runner) get(ctx context.Context, ref secretRef) (map[string]string, error) {
	if s, ok := r.secrets[ref]; ok {
		return s.data, nil
	}
	s, err := r.fetch(ctx, ref)
	if err != nil {
		return nil, err
	}
	r.secrets[ref] = s
	return s.data, nil
}

// fetch gets a secret anew and schedules its next look.
func (r *runner) fetch(ctx context.Context, ref secretRef) (*secret, error) {
	now := time.Now()
	s := &secret{ref: ref}
	switch ref.kind {
	case kindCreds:
		l, err := r.src.Creds(ctx, ref.a, ref.b)
		if err != nil {
			return nil, err
		}
		s.lease, s.data = l, maps.Clone(l.Data)
		s.expires = now.Add(l.Duration)
		switch {
		case l.Duration <= 0:
			// No expiry: nothing to renew.
		case !l.Renewable:
			s.next, s.refetch = after(now, jitter(l.Duration*4/5)), true
		default:
			s.next = after(now, jitter(l.Duration*2/3))
		}
		r.log.Info("minted credential", "ref", ref.String(), "lease_id", l.ID, "ttl", l.Duration)
	case kindKV:
		kv, err := r.src.KV(ctx, ref.a, ref.b)
		if err != nil {
			return nil, err
		}
		s.data, s.version = kvData(kv), kv.Version
		s.next, s.refetch = after(now, jitter(r.cfg.kvRefresh())), true
	case kindCert:
		c, err := r.src.Cert(ctx, ref.a, ref.b)
		if err != nil {
			return nil, err
		}
		s.data = certData(c)
		life := c.NotAfter.Sub(c.NotBefore)
		s.next, s.refetch = after(now, time.Until(c.NotBefore.Add(jitter(life*2/3)))), true
		r.log.Info("issued certificate", "ref", ref.String(), "serial", c.Serial, "not_after", c.NotAfter)
	}
	return s, nil
}

// advance does what is due for s and reports whether its data changed
// (or it is gone), so its dependents must render again.
func (r *runner) advance(ctx context.Context, s *secret) bool {
	now := time.Now()
	retry := now.Add(backoff(s.failures))
	if s.ref.kind == kindCreds && !s.refetch {
		info, err := r.src.Renew(ctx, s.lease.ID, s.lease.Duration)
		switch {
		case err == nil:
			s.failures = 0
			s.expires = info.ExpiresAt
			left := time.Until(info.ExpiresAt)
			if !info.MaxExpiresAt.IsZero() && !info.ExpiresAt.Before(info.MaxExpiresAt) {
				// Renewal can extend it no further: mint a successor
				// while this one still works.
				s.next, s.refetch = after(now, jitter(left*4/5)), true
				r.log.Info("lease reaches its max TTL; a new one will be minted", "ref", s.ref.String(), "lease_id", s.lease.ID, "at", s.next)
			} else {
				s.next = after(now, jitter(left*2/3))
			}
			r.log.Debug("renewed lease", "ref", s.ref.String(), "lease_id", s.lease.ID, "expires", info.ExpiresAt)
			return false
		case IsTransient(err) && retry.Before(s.expires):
			s.next = retry
			s.failures++
			r.log.Warn("lease renewal failed; retrying", "ref", s.ref.String(), "lease_id", s.lease.ID, "error", err, "retry_at", s.next)
			return false
		default:
			r.log.Warn("lease renewal refused; minting a new credential", "ref", s.ref.String(), "lease_id", s.lease.ID, "error", err)
		}
	}
	fresh, err := r.fetch(ctx, s.ref)
	if err != nil {
		if IsTransient(err) {
			s.next = retry
			s.failures++
			r.log.Warn("fetching a secret failed; retrying", "ref", s.ref.String(), "error", err, "retry_at", s.next)
			return false
		}
		// Gone or refused: drop it, so the templates that use it render
		// again, fail, keep their old output and retry.
		r.log.Error("secret is no longer available", "ref", s.ref.String(), "error", err)
		delete(r.secrets, s.ref)
		return true
	}
	r.secrets[s.ref] = fresh
	if s.ref.kind == kindKV && fresh.version == s.version && maps.Equal(fresh.data, s.data) {
		return false
	}
	if s.ref.kind == kindKV {
		r.log.Info("kv secret changed", "ref", s.ref.String(), "version", fresh.version)
	}
	return true
}

// renderAll renders every target that is new, dirty or due for a retry,
// delivers changed output, and restarts or signals the exec command when
// its environment changed.
func (r *runner) renderAll(ctx context.Context) {
	now := time.Now()
	envChanged := false
	for _, t := range r.targets {
		if t.tried && !t.dirty && (t.failures == 0 || now.Before(t.retryAt)) {
			continue
		}
		t.tried = true
		out, deps, err := renderTemplate(ctx, t.tmpl, r.get)
		if err != nil {
			// The render stopped part way: keep what the delivered output
			// uses as well, so its leases stay renewed while it is retried.
			t.deps = unionRefs(t.deps, deps)
			r.failed(t, "render failed", err)
			continue
		}
		t.deps = deps
		t.dirty = false
		if t.ok && bytes.Equal(out, t.out) {
			t.failures = 0
			r.observe(t, nil)
			continue
		}
		if t.file != nil {
			if !t.ok && t.file.same(out) {
				// Already on disk from an earlier run: nothing to reload.
				t.out, t.ok, t.failures = out, true, 0
				r.observe(t, nil)
				continue
			}
			if err := t.file.prepare(r.defaultDir, r.cfg.AllowDisk); err != nil {
				r.failed(t, "cannot write the file", err)
				continue
			}
			if err := t.file.write(out); err != nil {
				r.failed(t, "cannot write the file", err)
				continue
			}
			r.log.Info("rendered", "file", t.file.path, "bytes", len(out))
			if err := runReload(ctx, t.file.reload, r.childEnv, r.log); err != nil {
				r.log.Warn("reload failed", "file", t.file.path, "error", err)
			}
		} else {
			envChanged = envChanged || t.ok
		}
		t.out, t.ok, t.failures = out, true, 0
		r.observe(t, nil)
	}
	r.collect()
	if envChanged && r.sup != nil && r.sup.running() {
		r.log.Info("a secret in the command's environment changed")
		r.sup.changed(r.execEnv())
	}
}

// observe reports a render attempt's outcome to cfg.OnRender.
func (r *runner) observe(t *target, err error) {
	if r.cfg.OnRender != nil {
		r.cfg.OnRender(t.name, err)
	}
}

func (r *runner) failed(t *target, msg string, err error) {
	r.observe(t, err)
	t.retryAt = time.Now().Add(backoff(t.failures))
	t.failures++
	// Never the output: only what failed and why.
	r.log.Error(msg, "template", t.name, "kept_previous", t.ok, "error", err, "retry_at", t.retryAt)
}

func unionRefs(a, b []secretRef) []secretRef {
	out := append([]secretRef(nil), a...)
	for _, r := range b {
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// collect forgets secrets no template uses any more; their leases are left
// to expire.
func (r *runner) collect() {
	used := map[secretRef]bool{}
	for _, t := range r.targets {
		for _, d := range t.deps {
			used[d] = true
		}
	}
	for ref := range r.secrets {
		if !used[ref] {
			delete(r.secrets, ref)
		}
	}
}

// execEnv is the command's environment: the agent's, without its own
// credentials, plus the rendered values.
func (r *runner) execEnv() []string {
	env := append([]string(nil), r.childEnv...)
	for _, t := range r.targets {
		if t.envName != "" {
			env = append(env, t.envName+"="+string(t.out))
		}
	}
	return env
}

// cleanup revokes the leases held (revoke_on_exit) and removes the files
// marked remove_on_exit; it runs however Run ends, with its own deadline
// since ctx is usually done by then.
func (r *runner) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupWithin)
	defer cancel()
	if r.cfg.revokeOnExit() {
		for _, s := range r.secrets {
			if s.lease == nil || s.lease.ID == "" {
				continue
			}
			if err := r.src.Revoke(ctx, s.lease.ID); err != nil {
				r.log.Warn("revoke on exit failed", "ref", s.ref.String(), "lease_id", s.lease.ID, "error", err)
				continue
			}
			r.log.Info("revoked lease on exit", "ref", s.ref.String(), "lease_id", s.lease.ID)
		}
	}
	for _, t := range r.targets {
		if t.file != nil && t.file.remove {
			if err := os.Remove(t.file.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				r.log.Warn("remove on exit failed", "file", t.file.path, "error", err)
			}
		}
	}
}

// after is now+d, at least minDelay away so nothing spins.
func after(now time.Time, d time.Duration) time.Time {
	return now.Add(max(d, minDelay))
}

// backoff is 1s, 2s, 4s ... up to maxBackoff, with jitter.
func backoff(failures int) time.Duration {
	d := maxBackoff
	if failures < 6 {
		d = min(time.Second<<failures, maxBackoff)
	}
	return jitter(d)
}

// jitter returns d less up to a tenth, so agents started together do not
// renew together.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return d - time.Duration(binary.LittleEndian.Uint64(b[:])%uint64(d/10+1))
}

// RenderOnce renders the file templates once and returns: for an init
// step or a cron job. It neither renews nor revokes the leases behind the
// files (they must outlive it) and does not run exec. It fails if any
// template failed.
func RenderOnce(ctx context.Context, cfg Config, src Source, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Exec = nil
	r, err := newRunner(cfg, src, log)
	if err != nil {
		return err
	}
	r.renderAll(ctx)
	var failed []string
	for _, t := range r.targets {
		if !t.ok {
			failed = append(failed, t.name)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d templates failed: %v", len(failed), len(r.targets), failed)
	}
	return nil
}
