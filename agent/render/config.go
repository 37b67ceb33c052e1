// Package render delivers secrets to workloads: it renders Go text/template
// files onto a memory-only filesystem and environment variables for a
// process it runs, from kv secrets, dynamic credentials and certificates
// fetched from Sigil, keeps the leases behind them renewed, and renders
// again (then reloads the workload) when a secret rotates.
//
// It is a client of the public API only (see Source); `sigil agent` runs it
// beside its Workload API and `sigil exec` / `sigil agent render` run it with the
// CLI's credentials.
package render

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"
)

// Limits that bound what a configuration or a template can make the agent
// do; a hostile or mistaken template fails instead of exhausting memory or
// hammering the server.
const (
	// MaxOutput bounds one rendered file or environment value.
	MaxOutput = 1 << 20
	// MaxSourceSize bounds a template file named by source.
	MaxSourceSize = 256 << 10
	// MaxSecretsPerTemplate bounds the distinct secrets one template may
	// reference (a template can build names with printf inside a range).
	MaxSecretsPerTemplate = 64
	// MaxTemplates bounds the templates (files plus environment values) of
	// one configuration.
	MaxTemplates = 256
	// DefaultKVRefresh is how often kv secrets, which have no lease, are
	// read again to notice a new version.
	DefaultKVRefresh = 5 * time.Minute
)

// Config is the secrets-delivery part of agent.yaml: the templates:,
// exec:, allow_disk, revoke_on_exit and kv_refresh keys. agent.Load reads
// the whole file, these keys included (agent.Config inlines Config).
type Config struct {
	Templates []Template `yaml:"templates"`
	Exec      *Exec      `yaml:"exec"`
	// AllowDisk permits destinations on a disk-backed filesystem. Without
	// it only tmpfs and ramfs are accepted, so a secret never reaches a
	// disk (or a backup of one).
	AllowDisk bool `yaml:"allow_disk"`
	// RevokeOnExit revokes the leases the agent holds when Run ends
	// cleanly; nil means true.
	RevokeOnExit *bool `yaml:"revoke_on_exit"`
	// KVRefresh is how often kv secrets are read again; 0 means
	// DefaultKVRefresh.
	KVRefresh Duration `yaml:"kv_refresh"`

	// OnRender, when set, is told the outcome of every render attempt of
	// a template (err nil: rendered or unchanged): the agent's metrics.
	// It is called from Run's goroutine and must not block.
	OnRender func(template string, err error) `yaml:"-"`
}

// Template is one rendered file.
type Template struct {
	// Contents is the template text; Source names a file holding it.
	// Exactly one is set.
	Contents string `yaml:"contents"`
	Source   string `yaml:"source"`
	// Destination is where the file is written. A relative path is taken
	// under DefaultDir.
	Destination string `yaml:"destination"`
	// Mode is the file's permission bits, octal; default 0400.
	Mode FileMode `yaml:"mode"`
	// UID and GID own the file: a number or a name; empty means the
	// agent's own.
	UID string `yaml:"uid"`
	GID string `yaml:"gid"`
	// Reload runs after the file changed.
	Reload *Reload `yaml:"reload"`
	// RemoveOnExit removes the file when Run ends cleanly.
	RemoveOnExit bool `yaml:"remove_on_exit"`
}

// Reload is what tells a workload that its file changed: a signal to the
// process whose pid is in Pidfile, or a command (argv, run without a
// shell).
type Reload struct {
	Signal  string   `yaml:"signal"`
	Pidfile string   `yaml:"pidfile"`
	Command []string `yaml:"command"`
}

// Exec runs a command with secrets in its environment.
type Exec struct {
	// Command is argv; `sigil exec` takes it from its arguments instead.
	Command []string `yaml:"command"`
	// Env maps an environment variable name to a template.
	Env map[string]string `yaml:"env"`
	// RestartOnChange restarts the command when a value changes; nil means
	// true unless Signal is set.
	RestartOnChange *bool `yaml:"restart_on_change"`
	// Signal is sent to the command instead of restarting it.
	Signal string `yaml:"signal"`

	// The command's standard streams; nil means the process's own.
	Stdin          io.Reader `yaml:"-"`
	Stdout, Stderr io.Writer `yaml:"-"`
}

// FileMode is permission bits written in octal (0400, "0640", 0o600).
type FileMode os.FileMode

// UnmarshalYAML reads the scalar's text as octal whatever YAML makes of
// it: `mode: 400` means 0400, not decimal 400.
func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: mode must be octal permission bits such as 0400", n.Line)
	}
	s := strings.TrimPrefix(strings.TrimPrefix(n.Value, "0o"), "0O")
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v == 0 || v > 0o777 {
		return fmt.Errorf("line %d: mode %q: want octal permission bits from 0001 to 0777, such as 0400", n.Line, n.Value)
	}
	*m = FileMode(v)
	return nil
}

// Duration is a Go duration string ("30s", "5m").
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: duration must be a string such as \"30s\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MaxConfigSize bounds agent.yaml.
const MaxConfigSize = 1 << 20

var unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type (\S+)`)

// sectionOf names the YAML section of a Go type in errors; the agent's
// own Config is the top level too.
var sectionOf = map[string]string{"render.Template": "templates item", "render.Reload": "reload", "render.Exec": "exec",
	"render.Config": "top level", "agent.Config": "top level"}

// UnknownKeyError rewrites yaml's error for an unknown key (decoding with
// KnownFields) to name the key and its section; other errors pass as
// they are.
func UnknownKeyError(err error) error {
	if m := unknownField.FindStringSubmatch(err.Error()); m != nil {
		section := sectionOf[m[3]]
		if section == "" {
			section = m[3]
		}
		return fmt.Errorf("line %s: unknown key %q in %s", m[1], m[2], section)
	}
	return err
}

// Parse decodes and validates the secrets-delivery keys alone; any other
// key is an error (agent.Load reads a whole agent.yaml).
func Parse(data []byte) (Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return Config{}, nil
		}
		return Config{}, UnknownKeyError(err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Validate checks the configuration without touching the filesystem.
func (c *Config) Validate() error {
	if n := len(c.Templates) + c.envCount(); n > MaxTemplates {
		return fmt.Errorf("%d templates and environment values: at most %d", n, MaxTemplates)
	}
	if c.KVRefresh < 0 || (c.KVRefresh != 0 && time.Duration(c.KVRefresh) < time.Second) {
		return fmt.Errorf("kv_refresh %v: must be at least 1s", time.Duration(c.KVRefresh))
	}
	seen := map[string]int{}
	for i := range c.Templates {
		t := &c.Templates[i]
		where := fmt.Sprintf("templates[%d]", i)
		if t.Destination != "" {
			where += " (" + t.Destination + ")"
		}
		if err := t.validate(); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if j, dup := seen[filepath.Clean(t.Destination)]; dup {
			return fmt.Errorf("%s: destination already used by templates[%d]", where, j)
		}
		seen[filepath.Clean(t.Destination)] = i
	}
	if c.Exec != nil {
		if err := c.Exec.validate(); err != nil {
			return fmt.Errorf("exec: %w", err)
		}
	}
	return nil
}

func (c *Config) envCount() int {
	if c.Exec == nil {
		return 0
	}
	return len(c.Exec.Env)
}

func (t *Template) validate() error {
	switch {
	case t.Contents == "" && t.Source == "":
		return errors.New("give contents or source")
	case t.Contents != "" && t.Source != "":
		return errors.New("give contents or source, not both")
	case t.Destination == "":
		return errors.New("destination is required")
	case len(t.Contents) > MaxSourceSize:
		return fmt.Errorf("contents is larger than %d bytes", MaxSourceSize)
	}
	if t.Source != "" && !filepath.IsAbs(t.Source) {
		return fmt.Errorf("source %q: must be an absolute path", t.Source)
	}
	if strings.HasSuffix(t.Destination, "/") || filepath.Base(t.Destination) == ".." || filepath.Base(t.Destination) == "." {
		return fmt.Errorf("destination %q: must name a file", t.Destination)
	}
	if !filepath.IsAbs(t.Destination) {
		if c := filepath.Clean(t.Destination); c == ".." || strings.HasPrefix(c, "../") {
			return fmt.Errorf("destination %q: a relative destination must stay inside the default directory", t.Destination)
		}
	}
	if _, err := lookupID(t.UID, false); err != nil {
		return err
	}
	if _, err := lookupID(t.GID, true); err != nil {
		return err
	}
	if t.Reload != nil {
		if err := t.Reload.validate(); err != nil {
			return fmt.Errorf("reload: %w", err)
		}
	}
	return nil
}

func (r *Reload) validate() error {
	switch {
	case len(r.Command) > 0 && (r.Signal != "" || r.Pidfile != ""):
		return errors.New("give signal and pidfile, or command, not both")
	case len(r.Command) > 0:
		if r.Command[0] == "" {
			return errors.New("command: the program name is empty")
		}
		return nil
	case r.Signal == "" || r.Pidfile == "":
		return errors.New("give signal and pidfile together, or command")
	case !filepath.IsAbs(r.Pidfile):
		return fmt.Errorf("pidfile %q: must be an absolute path", r.Pidfile)
	}
	_, err := ParseSignal(r.Signal)
	return err
}

func (e *Exec) validate() error {
	for name, text := range e.Env {
		if !envName.MatchString(name) {
			return fmt.Errorf("env %q: not a valid variable name (letters, digits and _, not starting with a digit)", name)
		}
		if len(text) > MaxSourceSize {
			return fmt.Errorf("env %s: template larger than %d bytes", name, MaxSourceSize)
		}
	}
	if e.Signal != "" {
		if _, err := ParseSignal(e.Signal); err != nil {
			return err
		}
		if e.RestartOnChange != nil && *e.RestartOnChange {
			return errors.New("give restart_on_change or signal, not both")
		}
	}
	if len(e.Command) > 0 && e.Command[0] == "" {
		return errors.New("command: the program name is empty")
	}
	return nil
}

// signals are those a reload or rotation may send: the ones programs
// conventionally handle. KILL and STOP are not reloads.
var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "TERM": syscall.SIGTERM,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "WINCH": syscall.SIGWINCH, "ALRM": syscall.SIGALRM,
	"CONT": syscall.SIGCONT,
}

// ParseSignal reads a signal name: SIGHUP, HUP or hup.
func ParseSignal(s string) (syscall.Signal, error) {
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if sig, ok := signals[name]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("signal %q: use one of HUP, INT, QUIT, TERM, USR1, USR2, WINCH, ALRM, CONT", s)
}

// lookupID resolves a uid or gid given as a number or a name; "" is -1,
// meaning "leave as the agent's own".
func lookupID(s string, group bool) (int, error) {
	what := "uid"
	if group {
		what = "gid"
	}
	if s == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n > 1<<31-2 {
			return 0, fmt.Errorf("%s %d: out of range", what, n)
		}
		return n, nil
	}
	var id string
	if group {
		g, err := user.LookupGroup(s)
		if err != nil {
			return 0, fmt.Errorf("%s %q: %w", what, s, err)
		}
		id = g.Gid
	} else {
		u, err := user.Lookup(s)
		if err != nil {
			return 0, fmt.Errorf("%s %q: %w", what, s, err)
		}
		id = u.Uid
	}
	return strconv.Atoi(id)
}

// revokeOnExit reports the effective revoke_on_exit.
func (c *Config) revokeOnExit() bool { return c.RevokeOnExit == nil || *c.RevokeOnExit }

// kvRefresh reports the effective kv_refresh.
func (c *Config) kvRefresh() time.Duration {
	if c.KVRefresh == 0 {
		return DefaultKVRefresh
	}
	return time.Duration(c.KVRefresh)
}

// restartOnChange reports what a change to the exec environment does.
func (e *Exec) restartOnChange() bool {
	if e.RestartOnChange != nil {
		return *e.RestartOnChange
	}
	return e.Signal == ""
}

// DefaultDir is where relative destinations go: $XDG_RUNTIME_DIR/sigil
// when that is set (a per-user tmpfs), else /run/sigil.
func DefaultDir(getenv func(string) string) string {
	if d := getenv("XDG_RUNTIME_DIR"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "sigil")
	}
	return "/run/sigil"
}
