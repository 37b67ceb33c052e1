package main

import (
	"bytes"
	"context"
	"reflect"
	"strings"
	"testing"
)

func TestParseFlagsInterleaved(t *testing.T) {
	tests := []struct {
		args    []string
		reason  string
		pos     []string
		wantErr bool
	}{
		{args: []string{"abc", "--reason", "keyCompromise"}, reason: "keyCompromise", pos: []string{"abc"}},
		{args: []string{"--reason", "1", "abc"}, reason: "1", pos: []string{"abc"}},
		{args: []string{"a", "b", "--reason=x", "c"}, reason: "x", pos: []string{"a", "b", "c"}},
		{args: []string{"a", "--", "--reason", "y"}, reason: "unspecified", pos: []string{"a", "--reason", "y"}},
		{args: []string{"a", "--nope"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			env := &cliEnv{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(string) string { return "" }}
			fs := newFlagSet(env, "x", "x")
			reason := fs.String("reason", "unspecified", "")
			err := parseFlags(fs, tt.args)
			if tt.wantErr {
				if err == nil {
					t.Fatal("expected an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *reason != tt.reason || !reflect.DeepEqual(fs.Args(), tt.pos) {
				t.Errorf("reason %q args %q", *reason, fs.Args())
			}
		})
	}
}

func TestParseKV(t *testing.T) {
	kv, err := parseKV([]string{"a=1", "b=x=y"})
	if err != nil || kv["a"] != "1" || kv["b"] != "x=y" {
		t.Fatalf("%v %v", kv, err)
	}
	if _, err := parseKV([]string{"novalue"}); err == nil {
		t.Fatal("accepted an argument without =")
	}
	if _, err := parseKV([]string{"a=@/nonexistent"}); err == nil {
		t.Fatal("accepted a missing @file")
	}
}

func TestRunUsageExitCodes(t *testing.T) {
	env := &cliEnv{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: func(string) string { return "" }}
	if code := run(context.Background(), env, []string{"lease", "revoke"}); code != 2 {
		t.Errorf("lease revoke without id: exit %d, want 2", code)
	}
	if code := run(context.Background(), env, []string{"role", "write", "noslash"}); code != 2 {
		t.Errorf("role write without MOUNT/ROLE: exit %d, want 2", code)
	}
}
