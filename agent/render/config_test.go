package render

import (
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name, yaml string
		wantErr    string // "" for success
		check      func(t *testing.T, c Config)
	}{
		{name: "empty", yaml: ``},
		{name: "other sections are agent.Load's", yaml: "server: 127.0.0.1:8444\ntemplates:\n  - contents: x\n    destination: a\n",
			wantErr: `line 1: unknown key "server" in top level`},
		{name: "full", yaml: `
allow_disk: true
revoke_on_exit: false
kv_refresh: 30s
templates:
  - contents: '{{ kv "kv/app" "password" }}'
    destination: /dev/shm/app/pw
    mode: 0440
    uid: "0"
    gid: root
    reload: {signal: SIGHUP, pidfile: /run/app.pid}
    remove_on_exit: true
  - source: /etc/sigil/db.tmpl
    destination: db.env
    mode: "600"
    reload: {command: [systemctl, reload, app]}
exec:
  command: [/usr/bin/app, --serve]
  env: {DB_PASSWORD: '{{ with creds "db/app" }}{{ .password }}{{ end }}'}
  signal: HUP
`, check: func(t *testing.T, c Config) {
			if !c.AllowDisk || c.revokeOnExit() || c.kvRefresh().String() != "30s" {
				t.Errorf("allow_disk %v revoke_on_exit %v kv_refresh %v", c.AllowDisk, c.revokeOnExit(), c.kvRefresh())
			}
			if c.Templates[0].Mode != 0o440 || c.Templates[1].Mode != 0o600 {
				t.Errorf("modes %o %o, want 440 600 (octal whatever YAML makes of them)", c.Templates[0].Mode, c.Templates[1].Mode)
			}
			if c.Exec.restartOnChange() {
				t.Error("signal set: restart_on_change must default to false")
			}
		}},
		{name: "defaults", yaml: "templates: [{contents: x, destination: a}]\nexec: {command: [app]}\n", check: func(t *testing.T, c Config) {
			if !c.revokeOnExit() || c.kvRefresh() != DefaultKVRefresh || !c.Exec.restartOnChange() {
				t.Errorf("defaults: revoke %v refresh %v restart %v", c.revokeOnExit(), c.kvRefresh(), c.Exec.restartOnChange())
			}
		}},
		{name: "unknown key in a template", yaml: "templates:\n  - contents: x\n    destination: a\n    destnation: b\n", wantErr: `line 4: unknown key "destnation" in templates item`},
		{name: "unknown key in reload", yaml: "templates:\n  - contents: x\n    destination: a\n    reload: {signal: HUP, pid: /x}\n", wantErr: `unknown key "pid" in reload`},
		{name: "unknown key in exec", yaml: "exec:\n  comand: [x]\n", wantErr: `unknown key "comand" in exec`},
		{name: "contents and source", yaml: "templates: [{contents: x, source: /y, destination: a}]", wantErr: "not both"},
		{name: "neither contents nor source", yaml: "templates: [{destination: a}]", wantErr: "give contents or source"},
		{name: "no destination", yaml: "templates: [{contents: x}]", wantErr: "destination is required"},
		{name: "relative source", yaml: "templates: [{source: t.tmpl, destination: a}]", wantErr: "must be an absolute path"},
		{name: "destination escapes default dir", yaml: "templates: [{contents: x, destination: ../../etc/passwd}]", wantErr: "must stay inside the default directory"},
		{name: "destination is a directory", yaml: "templates: [{contents: x, destination: /dev/shm/}]", wantErr: "must name a file"},
		{name: "duplicate destination", yaml: "templates: [{contents: x, destination: a}, {contents: y, destination: ./a}]", wantErr: "already used by templates[0]"},
		{name: "bad mode", yaml: "templates: [{contents: x, destination: a, mode: 0999}]", wantErr: "want octal permission bits"},
		{name: "mode with setuid", yaml: "templates: [{contents: x, destination: a, mode: 04755}]", wantErr: "want octal permission bits"},
		{name: "unknown user", yaml: "templates: [{contents: x, destination: a, uid: no-such-user-xyz}]", wantErr: `uid "no-such-user-xyz"`},
		{name: "negative uid", yaml: "templates: [{contents: x, destination: a, uid: '-5'}]", wantErr: "out of range"},
		{name: "reload signal and command", yaml: "templates: [{contents: x, destination: a, reload: {signal: HUP, pidfile: /p, command: [x]}}]", wantErr: "not both"},
		{name: "reload signal without pidfile", yaml: "templates: [{contents: x, destination: a, reload: {signal: HUP}}]", wantErr: "together"},
		{name: "reload unknown signal", yaml: "templates: [{contents: x, destination: a, reload: {signal: KILL, pidfile: /p}}]", wantErr: `signal "KILL"`},
		{name: "reload relative pidfile", yaml: "templates: [{contents: x, destination: a, reload: {signal: HUP, pidfile: app.pid}}]", wantErr: "absolute"},
		{name: "bad env name", yaml: "exec: {env: {'1BAD': x}}", wantErr: "not a valid variable name"},
		{name: "env name with =", yaml: "exec: {env: {'A=B': x}}", wantErr: "not a valid variable name"},
		{name: "restart and signal", yaml: "exec: {restart_on_change: true, signal: HUP}", wantErr: "not both"},
		{name: "kv_refresh too short", yaml: "kv_refresh: 10ms", wantErr: "at least 1s"},
		{name: "kv_refresh not a duration", yaml: "kv_refresh: often", wantErr: "invalid duration"},
		{name: "templates not a list", yaml: "templates: {contents: x}", wantErr: "cannot unmarshal"},
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
