package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestParseConfig: one agent.yaml holds the agent's keys and the
// renderer's; an unknown key is refused in whichever section it is.
func TestParseConfig(t *testing.T) {
	tests := []struct {
		name, yaml string
		wantErr    string // "" for success
		check      func(t *testing.T, c Config)
	}{
		{name: "empty", yaml: ``},
		{name: "both halves", yaml: `
server: 127.0.0.1:8444
cacert: /etc/sigil/ca.pem
data: /var/lib/sigil-agent
socket: /run/sigil-agent/agent.sock
spiffe_id: spiffe://example.org/node/web-1
health_addr: 127.0.0.1:8089
sync_interval: 2s
allow_disk: true
kv_refresh: 30s
templates:
  - contents: '{{ kv "kv/app" "password" }}'
    destination: app/pw
    mode: 0440
    reload: {signal: HUP, pidfile: /run/app.pid}
exec:
  env: {K: '{{ kv "kv/app" "k" }}'}
`, check: func(t *testing.T, c Config) {
			if c.Server != "127.0.0.1:8444" || c.CACert != "/etc/sigil/ca.pem" || c.DataDir != "/var/lib/sigil-agent" ||
				c.Socket != "/run/sigil-agent/agent.sock" || c.SPIFFEID != "spiffe://example.org/node/web-1" ||
				c.HealthAddr != "127.0.0.1:8089" || c.SyncInterval != 2*time.Second {
				t.Errorf("agent keys: %+v", c)
			}
			r := c.Render
			if !r.AllowDisk || time.Duration(r.KVRefresh) != 30*time.Second || len(r.Templates) != 1 || r.Templates[0].Mode != 0o440 ||
				r.Templates[0].Reload == nil || r.Exec == nil || len(r.Exec.Env) != 1 {
				t.Errorf("render keys: %+v", r)
			}
		}},
		{name: "unknown top-level key", yaml: "server: x\nsokcet: /run/a.sock\n", wantErr: `line 2: unknown key "sokcet" in top level`},
		{name: "unknown key in a template", yaml: "socket: /s\ntemplates:\n  - contents: x\n    destination: a\n    destnation: b\n", wantErr: `line 5: unknown key "destnation" in templates item`},
		{name: "unknown key in reload", yaml: "templates: [{contents: x, destination: a, reload: {signal: HUP, pid: /x}}]", wantErr: `unknown key "pid" in reload`},
		{name: "unknown key in exec", yaml: "exec:\n  comand: [x]\n", wantErr: `unknown key "comand" in exec`},
		{name: "join token in the file", yaml: "join_token: abc\n", wantErr: "not read from the file"},
		{name: "proc_root is not configurable", yaml: "proc_root: /tmp\n", wantErr: `unknown key "proc_root"`},
		{name: "render validation runs", yaml: "templates: [{contents: x}]", wantErr: "destination is required"},
		{name: "negative sync interval", yaml: "sync_interval: -1s", wantErr: "must not be negative"},
		{name: "bad sync interval", yaml: "sync_interval: often", wantErr: "cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte("templates: [{contents: x, destination: a, bogus: 1}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), `unknown key "bogus"`) {
		t.Fatalf("Load error = %v, want the file and the key named", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
}
