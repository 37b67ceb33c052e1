package main

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoginFlagsApply: --login-jwt takes over from any token the CLI
// found, its companions need it, and it excludes a client certificate;
// SIGIL_LOGIN_* give the defaults.
func TestLoginFlagsApply(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		cert    string
		want    bool // a login source
		mount   string
		wantErr string
	}{
		{name: "none", want: false},
		{name: "flags", args: []string{"--login-jwt", "/t", "--login-mount", "kubernetes", "--login-role", "app"}, want: true, mount: "kubernetes"},
		{name: "env", env: map[string]string{"SIGIL_LOGIN_JWT_FILE": "/t", "SIGIL_LOGIN_ROLE": "app"}, want: true, mount: "jwt"},
		{name: "role without file", args: []string{"--login-role", "app"}, wantErr: "go with --login-jwt"},
		{name: "mount without file", env: map[string]string{"SIGIL_LOGIN_MOUNT": "k8s"}, wantErr: "go with --login-jwt"},
		{name: "with a client certificate", args: []string{"--login-jwt", "/t"}, cert: "c.pem", wantErr: "--client-cert"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := &cliEnv{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(k string) string { return tt.env[k] }}
			fs := newFlagSet(env, "exec", "test")
			var lf loginFlags
			lf.register(fs, env)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			cf := clientFlags{token: "sgt_from-the-token-file", clientCert: tt.cert}
			src, err := lf.apply(&cf, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (src != nil) != tt.want {
				t.Fatalf("login source %v, want %v", src != nil, tt.want)
			}
			if !tt.want {
				if cf.token == "" || cf.perRPC != nil {
					t.Fatal("without --login-jwt the CLI's token must stay")
				}
				return
			}
			if cf.token != "" || cf.perRPC != src || src.mount != tt.mount {
				t.Fatalf("token %q perRPC %v mount %q: the login must replace the token", cf.token, cf.perRPC, src.mount)
			}
		})
	}
}

// TestLoginSourceReadJWT: the file is read afresh each time, and an
// empty, oversized or missing file is an error naming the file, never
// quoting its contents.
func TestLoginSourceReadJWT(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	big := strings.Repeat("x", maxJWTFile+1)
	tests := []struct {
		name, file, want, wantErr string
	}{
		{name: "token", file: write("ok", "eyJ.a.b\n"), want: "eyJ.a.b"},
		{name: "empty", file: write("empty", " \n"), wantErr: "is empty"},
		{name: "oversized", file: write("big", big), wantErr: "larger than"},
		{name: "missing", file: filepath.Join(dir, "missing"), wantErr: "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &loginSource{jwtFile: tt.file}
			got, err := s.readJWT()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "--login-jwt") || strings.Contains(err.Error(), "xxxx") {
					t.Fatalf("err %v, want one naming --login-jwt and %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
	// Rotated in place: the next read sees the new token.
	p := write("rot", "first")
	s := &loginSource{jwtFile: p}
	write("rot", "second")
	if got, err := s.readJWT(); err != nil || got != "second" {
		t.Fatalf("after rotation got %q, %v", got, err)
	}
}
