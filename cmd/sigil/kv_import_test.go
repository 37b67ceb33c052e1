package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKVParseImport reads each accepted shape and refuses bad input with
// an error naming the path.
func TestKVParseImport(t *testing.T) {
	vaultGet := `{"request_id":"r","lease_id":"","data":{"data":{"password":"s3cr3t","port":5432,"tls":true},"metadata":{"version":3}}}`
	tests := []struct {
		name    string
		in      string
		single  string
		want    map[string]map[string]string // path → field → value
		wantErr []string
	}{
		{name: "plain JSON map", in: `{"apps/web":{"user":"u","password":"p"},"apps/db":{"dsn":"x=1"}}`,
			want: map[string]map[string]string{"apps/web": {"user": "u", "password": "p"}, "apps/db": {"dsn": "x=1"}}},
		{name: "plain YAML map keeps scalar text", in: "apps/web:\n  port: 0080\n  on: yes\n  when: 2026-01-02\n  multi: |\n    a\n    b\n",
			want: map[string]map[string]string{"apps/web": {"port": "0080", "on": "yes", "when": "2026-01-02", "multi": "a\nb\n"}}},
		{name: "vault get output with --path", in: vaultGet, single: "db/main",
			want: map[string]map[string]string{"db/main": {"password": "s3cr3t", "port": "5432", "tls": "true"}}},
		{name: "map of vault get outputs", in: `{"a":` + vaultGet + `,"b":{"data":{"k":"v"},"metadata":{}}}`,
			want: map[string]map[string]string{"a": {"password": "s3cr3t", "port": "5432", "tls": "true"}, "b": {"k": "v"}}},
		{name: "sigil get output with binary", in: `{"bin":{"data":{"note":"n"},"data_base64":{"blob":"AAEC/w=="},"version":2}}`,
			want: map[string]map[string]string{"bin": {"note": "n", "blob": "\x00\x01\x02\xff"}}},
		{name: "yaml binary tag", in: "bin:\n  blob: !!binary AAEC/w==\n",
			want: map[string]map[string]string{"bin": {"blob": "\x00\x01\x02\xff"}}},
		{name: "leading slash trimmed", in: `{"/x":{"a":"b"}}`, want: map[string]map[string]string{"x": {"a": "b"}}},
		{name: "vault get without --path", in: vaultGet, wantErr: []string{"vault kv get", "--path"}},
		{name: "dot-dot path", in: `{"ok":{"a":"b"},"apps/../etc":{"a":"b"}}`, wantErr: []string{"apps/../etc", ".."}},
		{name: "empty segment", in: `{"a//b":{"a":"b"}}`, wantErr: []string{"a//b"}},
		{name: "nested value", in: `{"apps/web":{"cfg":{"x":1},"k":"v"}}`, wantErr: []string{"apps/web", "cfg", "nested"}},
		{name: "null value", in: `{"apps/web":{"k":null}}`, wantErr: []string{"apps/web", "k", "null"}},
		{name: "no fields", in: `{"apps/web":{}}`, wantErr: []string{"apps/web", "no fields"}},
		{name: "secret not a map", in: `{"apps/web":"v"}`, wantErr: []string{"apps/web", "map of field"}},
		{name: "bad field name", in: `{"apps/web":{"a=b":"v"}}`, wantErr: []string{"apps/web", `"a=b"`}},
		{name: "duplicate path", in: "x: {a: b}\n/x: {a: c}\n", wantErr: []string{"x", "twice"}},
		{name: "bad base64", in: `{"bin":{"data":{"n":"1"},"data_base64":{"blob":"!!"}}}`, wantErr: []string{"bin", "blob", "base64"}},
		{name: "too large", in: `{"big":{"v":"` + strings.Repeat("x", kvMaxInput+1) + `"}}`, wantErr: []string{"big", "larger than"}},
		{name: "not a map", in: `["a"]`, wantErr: []string{"not a map"}},
		{name: "empty", in: ``, wantErr: []string{"empty"}},
		{name: "garbage", in: `{"a": [`, wantErr: []string{"not JSON or YAML"}},
		{name: "two documents", in: "a: {x: y}\n---\nb: {x: y}\n", wantErr: []string{"more than one"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := kvParseImport([]byte(tt.in), tt.single)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("accepted: %v", got)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Fatalf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d secrets, want %d", len(got), len(tt.want))
			}
			for _, s := range got {
				w, ok := tt.want[s.path]
				if !ok || len(w) != len(s.data) {
					t.Fatalf("%s: got %q, want %q", s.path, s.data, w)
				}
				for k, v := range w {
					if !bytes.Equal(s.data[k], []byte(v)) {
						t.Fatalf("%s.%s = %q, want %q", s.path, k, s.data[k], v)
					}
				}
			}
		})
	}
}

// TestKVImportRefusesBeforeConnecting: bad input is refused with the path
// named and without a server (nothing can have been written), and the
// mount is required.
func TestKVImportRefusesBeforeConnecting(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"good":{"a":"b"},"bad/../x":{"a":"b"}}`), 0o600)
	// An address nothing listens on: a connection attempt would fail
	// with a different error.
	envVars := map[string]string{"SIGIL_ADDR": "127.0.0.1:1"}
	_, stderr, code := runCLI(t, envVars, "kv", "import", "--mount", "kv", bad)
	if code != 1 || !strings.Contains(stderr, "nothing written") || !strings.Contains(stderr, "bad/../x") {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
	_, stderr, code = runCLI(t, envVars, "kv", "import", bad)
	if code != 2 || !strings.Contains(stderr, "--mount") {
		t.Fatalf("without --mount: code %d, stderr %q", code, stderr)
	}
	_, stderr, code = runCLI(t, envVars, "kv", "import", "--mount", "kv", filepath.Join(dir, "missing.json"))
	if code != 1 || !strings.Contains(stderr, "missing.json") {
		t.Fatalf("missing file: code %d, stderr %q", code, stderr)
	}
}
