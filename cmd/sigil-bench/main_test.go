package main

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/bench"
)

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestParseArgsDefaultsFromEnv(t *testing.T) {
	c, err := parseArgs(nil, env(map[string]string{"SIGIL_ADDR": "127.0.0.1:1", "SIGIL_TOKEN": "tok", "SIGIL_CACERT": "ca.pem"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.sigil.Addr != "127.0.0.1:1" || c.sigil.Token != "tok" || c.sigil.CACert != "ca.pem" {
		t.Fatalf("%+v", c.sigil)
	}
	if c.scenario != "sign" || !slices.Equal(c.concurrency, []int{1, 16}) || c.duration != 10*time.Second || !slices.Equal(c.targets, []string{"sigil"}) {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestParseArgs(t *testing.T) {
	c, err := parseArgs(strings.Fields("--start-dev --sigil-bin /x/sigil -c 2,4,8 --count 500 --duration 0 --pprof --server-arg --log-level=warn --server-arg --x"), env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !c.startDev || c.sigilBin != "/x/sigil" || !slices.Equal(c.concurrency, []int{2, 4, 8}) || c.count != 500 || c.duration != 0 || !c.pprof {
		t.Fatalf("%+v", c)
	}
	if !slices.Equal(c.serverArg, []string{"--log-level=warn", "--x"}) {
		t.Fatalf("server args %q", c.serverArg)
	}
	c, err = parseArgs(strings.Fields("--targets sigil,step-ca --addr a:1 --stepca-url https://127.0.0.1:9 --stepca-root r --stepca-provisioner p --rounds 2"), env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.targets, []string{"sigil", "step-ca"}) || c.rounds != 2 {
		t.Fatalf("%+v", c)
	}
}

func TestParseArgsErrors(t *testing.T) {
	cases := map[string]string{
		"--scenario acme --targets step-ca":                             "needs --stepca-url",
		"--scenario nope":                                               "unknown",
		"--scenario transit-encrypt --targets step-ca":                  "sigil only",
		"--scenario kv --targets step-ca":                               "sigil only",
		"--scenario leases --addr a:1 --leases 0":                       "--leases",
		"--scenario leases --addr a:1 --lease-source vault":             "--lease-source",
		"--scenario leases --addr a:1 --lease-role-fields ttl":          "key=value",
		"--scenario leases --addr a:1 --lease-engine-config =x":         "key=value",
		"--scenario leases --addr a:1 --lease-ttl -1s":                  "negative",
		"--scenario creds-postgres --addr a:1 --pg-scram-iterations -1": "negative",
		"--scenario leases --start-dev --metrics-url https://x/metrics": "--metrics-url",
		"--scenario creds-postgres --targets step-ca":                   "sigil only",
		"--scenario acme --start-dev --acme-request-limit -1":           "--acme-request-limit",
		"-c 0":                                  "at least 1",
		"-c x":                                  "not a number",
		"--duration 0":                          "--duration or --count",
		"--duration -1s":                        "negative",
		"--targets vault":                       "unknown target",
		"--targets step-ca":                     "needs --stepca-url",
		"--pprof --addr a:1":                    "need --start-dev",
		"--dev-storage postgres --addr a:1":     "need --start-dev",
		"--start-dev --dev-storage mysql":       "want sqlite or postgres",
		"--start-dev --addr a:1":                "excludes",
		"--addr a:1 --profile workload":         "--trust-domain",
		"--addr a:1 --rounds 0":                 "--rounds",
		"--addr a:1 stray":                      "unexpected argument",
		"":                                      "needs --addr",
		"--addr a:1 --keys 0":                   "at least 1",
		"--start-dev --targets sigil,step-ca":   "needs --stepca-url",
		"--addr a:1 --no-such-flag":             "not defined",
		"--start-dev --server-pid 5 --count 10": "excludes",
	}
	for args, want := range cases {
		_, err := parseArgs(strings.Fields(args), env(nil), io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want it to mention %q", args, err, want)
		}
	}
}

func TestParseArgsLeases(t *testing.T) {
	c, err := parseArgs(strings.Fields("--scenario leases --start-dev --leases 1000000 -c 32 --lease-ttl 20s --lease-long-ttl 40m"), env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.leases != 1_000_000 || c.leaseShortTTL != 20*time.Second || c.leaseLongTTL != 40*time.Minute || !slices.Equal(c.concurrency, []int{32}) {
		t.Fatalf("%+v", c)
	}
	// The default is the tokens engine with the role of its contract.
	e := c.leaseEngine
	if c.leaseSource != bench.LeaseSourceCreds || e.Type != "tokens" || e.Mount != "bench-tokens" || e.Role != "bench" ||
		e.RoleFields["format"] != "opaque" || e.RoleFields["ttl"] != "30s" || e.RoleFields["max_ttl"] != "1h" || len(e.RoleFields) != 3 || e.Config != nil {
		t.Fatalf("lease engine %+v", e)
	}
	c, err = parseArgs([]string{"--scenario", "leases", "--addr", "a:1", "--metrics-url", "https://h:8443/metrics",
		"--lease-source", "api-tokens", "--lease-engine", "kv", "--lease-role-fields", "a=1,b=x=y", "--lease-engine-config", "k=v"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.leaseSource != bench.LeaseSourceAPITokens || c.metricsURL != "https://h:8443/metrics" || c.leaseEngine.Type != "kv" ||
		c.leaseEngine.RoleFields["a"] != "1" || c.leaseEngine.RoleFields["b"] != "x=y" || c.leaseEngine.Config["k"] != "v" {
		t.Fatalf("%+v", c)
	}
	c, err = parseArgs(strings.Fields("--scenario creds-postgres --start-dev --pg-scram-iterations 16 --pg-mount pg --pg-role ro"), env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.pgSCRAM != 16 || c.pgMount != "pg" || c.pgRole != "ro" || c.pgDSN != "" {
		t.Fatalf("%+v", c)
	}
}

func TestParseIntList(t *testing.T) {
	got, err := parseIntList(" 1, 16 ")
	if err != nil || !slices.Equal(got, []int{1, 16}) {
		t.Fatalf("%v %v", got, err)
	}
}

func TestHasConfigArg(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--log-level=warn"}, false},
		{[]string{"--config", "x.yaml"}, true},
		{[]string{"--config=x.yaml"}, true},
		{[]string{"-config=x.yaml"}, true},
		{[]string{"--configure"}, false},
		{[]string{"config"}, false},
	} {
		if got := hasConfigArg(tc.args); got != tc.want {
			t.Errorf("hasConfigArg(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}
