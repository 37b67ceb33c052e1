// Command sigil is Sigil's one binary: `sigil server` runs the authority and
// every other subcommand is a client of its gRPC API.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"google.golang.org/grpc/status"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "0.1.0-dev"

// usageError is a mistake in how the command was called: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// exitError ends the command with a code and no further message: what had
// to be said is already on stdout (`sigil status` exits 2 when sealed).
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *cliEnv, args []string) error
	sub     []*command
}

// cliEnv carries the process's streams and environment, so tests can run
// commands in-process.
type cliEnv struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	getenv         func(string) string
	// path and summary name the command being run; usage is its usage
	// line, repeated under a usage error.
	path, summary, usage string
}

func commands() *command {
	return &command{name: "sigil", summary: "certificate and dynamic-credential authority", sub: []*command{
		{name: "server", summary: "run the authority", run: runServer},
		{name: "status", summary: "show the server's version, seal state, storage and CA", run: runStatus},
		{name: "version", summary: "print the client version (also sigil --version)", run: runVersion},
		{name: "help", summary: "show a command's help: sigil help COMMAND...", run: nil},
		{name: "completion", summary: "print a shell completion script: sigil completion bash|zsh|fish", run: runCompletion},
		{name: "operator", summary: "initialise, unseal and seal the server", sub: []*command{
			{name: "init", summary: "create the master key and split it into unseal shares", run: runOperatorInit},
			{name: "unseal", summary: "offer one unseal share", run: runOperatorUnseal},
			{name: "seal", summary: "seal the server (root token)", run: runOperatorSeal},
			{name: "decrypt-share", summary: "decrypt a share encrypted to your key", run: runOperatorDecryptShare},
			{name: "rotate", summary: "add a new barrier data-encryption key (root token)", run: runOperatorRotate},
			{name: "rewrap", summary: "re-encrypt stored secrets under the newest barrier key (root token)", run: runOperatorRewrap},
			{name: "members", summary: "list the nodes sharing this server's database", run: runOperatorMembers},
			{name: "snapshot", summary: "back up and restore the embedded database", sub: snapshotCommands()},
		}},
		{name: "engine", summary: "mount and configure secret engines", sub: []*command{
			{name: "enable", summary: "mount an engine: sigil engine enable TYPE --mount PATH", run: runEngineEnable},
			{name: "list", summary: "list mounted engines", run: runEngineList},
			{name: "disable", summary: "unmount an engine: sigil engine disable PATH [--revoke-leases]", run: runEngineDisable},
			{name: "configure", summary: "configure an engine: sigil engine configure PATH key=value...", run: runEngineConfigure},
			{name: "rotate-root", summary: "rotate an engine's root credential", run: runEngineRotateRoot},
		}},
		{name: "role", summary: "engine roles", sub: []*command{
			{name: "write", summary: "sigil role write MOUNT/ROLE key=value... (value @file reads a file)", run: runRoleWrite},
			{name: "read", summary: "sigil role read MOUNT/ROLE", run: runRoleRead},
			{name: "list", summary: "sigil role list MOUNT", run: runRoleList},
			{name: "delete", summary: "sigil role delete MOUNT/ROLE", run: runRoleDelete},
		}},
		{name: "creds", summary: "mint a secret: sigil creds MOUNT/ROLE [--ttl D] [--pq] [--wrap-ttl D]", run: runCreds},
		{name: "exec", summary: "run a command with secrets rendered into its environment: sigil exec [--env NAME=TEMPLATE] -- CMD", run: runExec},
		{name: "unwrap", summary: "return a wrapped response, once: sigil unwrap TOKEN", run: runUnwrap},
		{name: "lease", summary: "list, renew and revoke leases", sub: []*command{
			{name: "list", summary: "sigil lease list [--prefix P] [--irrevocable]", run: runLeaseList},
			{name: "lookup", summary: "sigil lease lookup ID", run: runLeaseLookup},
			{name: "renew", summary: "sigil lease renew ID [--increment D]", run: runLeaseRenew},
			{name: "revoke", summary: "sigil lease revoke ID | --prefix P | --force ID", run: runLeaseRevoke},
		}},
		{name: "policy", summary: "deny-by-default access policies", sub: []*command{
			{name: "write", summary: "sigil policy write NAME FILE", run: runPolicyWrite},
			{name: "read", summary: "sigil policy read NAME", run: runPolicyRead},
			{name: "list", summary: "sigil policy list", run: runPolicyList},
			{name: "delete", summary: "sigil policy delete NAME", run: runPolicyDelete},
			{name: "test", summary: "explain a decision: sigil policy test --identity ID --path P --capability C", run: runPolicyTest},
		}},
		{name: "token", summary: "scoped API tokens", sub: []*command{
			{name: "create", summary: "sigil token create --policy P [--ttl D] [--uses N]", run: runTokenCreate},
			{name: "lookup", summary: "sigil token lookup [ID]", run: runTokenLookup},
			{name: "revoke", summary: "sigil token revoke ID", run: runTokenRevoke},
			{name: "renew", summary: "sigil token renew [--increment D] [ID]", run: runTokenRenew},
			{name: "introspect", summary: "is a token minted by a tokens engine active? sigil token introspect TOKEN|-", run: runTokenIntrospect},
		}},
		{name: "ssh", summary: "SSH certificates from a keys engine's ssh_user/ssh_host roles", sub: []*command{
			{name: "sign", summary: "sigil ssh sign MOUNT/ROLE --public-key FILE [--principals a,b] [--ttl D]", run: runSSHSign},
		}},
		{name: "transit", summary: "encryption as a service: named, versioned keys that never leave Sigil", sub: []*command{
			{name: "create", summary: "sigil transit create MOUNT/KEY [--type T]", run: runTransitCreate},
			{name: "rotate", summary: "sigil transit rotate MOUNT/KEY", run: runTransitRotate},
			{name: "config", summary: "sigil transit config MOUNT/KEY [--min-decryption-version N] [--deletion-allowed B]", run: runTransitConfig},
			{name: "read", summary: "sigil transit read MOUNT/KEY", run: runTransitRead},
			{name: "list", summary: "sigil transit list MOUNT", run: runTransitList},
			{name: "delete", summary: "sigil transit delete MOUNT/KEY", run: runTransitDelete},
			{name: "encrypt", summary: "sigil transit encrypt MOUNT/KEY [PLAINTEXT|-] [--aad S]", run: runTransitEncrypt},
			{name: "decrypt", summary: "sigil transit decrypt MOUNT/KEY CIPHERTEXT [--aad S]", run: runTransitDecrypt},
			{name: "rewrap", summary: "sigil transit rewrap MOUNT/KEY CIPHERTEXT [--aad S]", run: runTransitRewrap},
			{name: "datakey", summary: "sigil transit datakey MOUNT/KEY [--bits N] [--wrapped-only]", run: runTransitDataKey},
			{name: "sign", summary: "sigil transit sign MOUNT/KEY [INPUT|-]", run: runTransitSignLike(false)},
			{name: "verify", summary: "sigil transit verify MOUNT/KEY SIGNATURE [INPUT|-]", run: runTransitVerifyLike(false)},
			{name: "hmac", summary: "sigil transit hmac MOUNT/KEY [INPUT|-]", run: runTransitSignLike(true)},
			{name: "verify-hmac", summary: "sigil transit verify-hmac MOUNT/KEY HMAC [INPUT|-]", run: runTransitVerifyLike(true)},
		}},
		{name: "kv", summary: "versioned static secrets (Vault KV v2 semantics); paths are MOUNT/PATH", sub: []*command{
			{name: "put", summary: "sigil kv put MOUNT/PATH NAME=VALUE|NAME=@FILE|NAME=- ... [--cas N]", run: runKVWrite(false)},
			{name: "get", summary: "sigil kv get MOUNT/PATH [--version N] [--field NAME] [--recipient-key PUB.pem]", run: runKVGet},
			{name: "patch", summary: "sigil kv patch MOUNT/PATH NAME=VALUE... [--remove a,b] [--cas N]", run: runKVWrite(true)},
			{name: "list", summary: "sigil kv list MOUNT[/PREFIX]", run: runKVList},
			{name: "delete", summary: "sigil kv delete MOUNT/PATH [--versions 1,2]", run: runKVVersions("delete")},
			{name: "undelete", summary: "sigil kv undelete MOUNT/PATH --versions 1,2", run: runKVVersions("undelete")},
			{name: "destroy", summary: "sigil kv destroy MOUNT/PATH --versions 1,2 (removes the values for good)", run: runKVVersions("destroy")},
			{name: "rollback", summary: "sigil kv rollback MOUNT/PATH --version N", run: runKVRollback},
			{name: "import", summary: "sigil kv import --mount MOUNT [--path PATH] FILE|- (JSON or YAML; Vault kv get -format=json)", run: runKVImport},
			{name: "metadata", summary: "a secret's metadata and settings", sub: []*command{
				{name: "get", summary: "sigil kv metadata get MOUNT/PATH", run: runKVMetadataGet},
				{name: "put", summary: "sigil kv metadata put MOUNT/PATH max_versions=N cas_required=B ...", run: runKVMetadataPut},
				{name: "delete", summary: "sigil kv metadata delete MOUNT/PATH (every version)", run: runKVMetadataDelete},
			}},
		}},
		authCommands(), {name: "login", summary: "exchange a JWT, OIDC or LDAP login for a token: sigil login --method jwt|oidc|ldap", run: runLogin},
		{name: "envelope", summary: "open sealed secrets", sub: []*command{
			{name: "open", summary: "sigil envelope open --key KEY.pem [FILE|-]", run: runEnvelopeOpen},
		}},
		{name: "audit", summary: "the tamper-evident audit log", sub: []*command{
			{name: "verify", summary: "check the hash chain of the audit log", run: runAuditVerify},
			{name: "hash", summary: "the HMAC the audit log records for a value", run: runAuditHash},
		}},
		{name: "acme", summary: "ACME external account binding keys and accounts", sub: []*command{
			{name: "eab", summary: "External Account Binding keys", sub: []*command{
				{name: "create", summary: "sigil acme eab create [--provisioner NAME]", run: runACMEEABCreate},
				{name: "list", summary: "sigil acme eab list [--provisioner NAME]", run: runACMEEABList},
				{name: "revoke", summary: "sigil acme eab revoke KEY-ID", run: runACMEEABRevoke},
			}},
			{name: "accounts", summary: "ACME accounts", sub: []*command{
				{name: "list", summary: "sigil acme accounts list [--provisioner NAME]", run: runACMEAccountsList},
				{name: "deactivate", summary: "sigil acme accounts deactivate ID", run: runACMEAccountsDeactivate},
			}},
		}},
		agentCommand(),
		{name: "identity", summary: "workload identity: join tokens, enrollment, renewal", sub: []*command{
			{name: "join-token", summary: "one-time bootstrap tokens", sub: []*command{
				{name: "create", summary: "sigil identity join-token create --spiffe-id ID [--ttl 10m]", run: runJoinTokenCreate},
			}},
			{name: "enroll", summary: "sigil identity enroll --join-token T --spiffe-id ID --key-out F --cert-out F", run: runEnroll},
			{name: "renew", summary: "renew an SVID with the current one: sigil identity renew --client-cert C --client-key K --spiffe-id ID --key-out F --cert-out F", run: runIdentityRenew},
		}},
		{name: "ca", summary: "certificate authority operations", sub: []*command{
			{name: "init", summary: "create the root and intermediate CA in key custody", run: runCAInit},
			{name: "bootstrap", summary: "fetch the root over HTTPS, check its SHA-256 fingerprint and pin it: sigil ca bootstrap --ca-url URL --fingerprint SHA256", run: runCABootstrap},
			{name: "root", summary: "print the root certificate (PEM)", run: runCARoot},
			{name: "chain", summary: "print the issuing chain (PEM)", run: runCAChain},
			{name: "sign", summary: "sign a CSR: sigil ca sign --csr FILE [--profile P] [--ttl D]", run: runCASign},
			{name: "sign-intermediate", summary: "sign a name-constrained subordinate CA: sigil ca sign-intermediate --csr FILE --permitted-dns D", run: runCASignIntermediate},
			{name: "issue", summary: "generate a key locally and get a certificate: sigil ca issue --spiffe-id ID --key-out F --cert-out F", run: runCAIssue},
			{name: "revoke", summary: "revoke a certificate: sigil ca revoke SERIAL [--reason R]", run: runCARevoke},
			{name: "list", summary: "list issued certificates", run: runCAList},
			{name: "crl", summary: "write a CRL (DER) to stdout or --out", run: runCACRL},
			{name: "issuers", summary: "list the CA hierarchy", run: runCAIssuers},
			{name: "intermediate", summary: "manage intermediates", sub: []*command{
				{name: "import", summary: "install an externally signed intermediate: sigil ca intermediate import CHAIN.pem", run: runCAIntermediateImport},
				{name: "rotate", summary: "sign a new active intermediate with the root", run: runCAIntermediateRotate},
				{name: "revoke", summary: "revoke an issuer or sub-CA certificate: sigil ca intermediate revoke [--rotate|--force] ISSUER-ID", run: runCAIntermediateRevoke},
			}},
		}},
	}}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	env := &cliEnv{stdout: os.Stdout, stderr: os.Stderr, stdin: os.Stdin, getenv: os.Getenv}
	code := run(ctx, env, os.Args[1:])
	stop()
	os.Exit(code)
}

// run executes args and returns the exit code: 0 success, 1 failure, 2 usage.
func run(ctx context.Context, env *cliEnv, args []string) int {
	err := dispatch(ctx, env, commands(), args, "sigil")
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(env.stderr, "error: %s\n", ue.msg)
		if env.usage != "" {
			fmt.Fprintf(env.stderr, "usage: %s\n", env.usage)
		}
		fmt.Fprintf(env.stderr, "(run '%s --help' for more)\n", env.path)
		return 2
	}
	var re *rpcError
	if errors.As(err, &re) {
		fmt.Fprintf(env.stderr, "error: %s\n", re.Error())
		return 1
	}
	if st, ok := status.FromError(err); ok && st.Message() != "" {
		fmt.Fprintf(env.stderr, "error: %s (%s)\n", st.Message(), st.Code())
		return 1
	}
	fmt.Fprintf(env.stderr, "error: %v\n", err)
	return 1
}

var errHelp = errors.New("help shown")

func isHelpArg(a string) bool { return a == "-h" || a == "--help" || a == "-help" || a == "help" }

func dispatch(ctx context.Context, env *cliEnv, c *command, args []string, path string) error {
	env.path, env.summary = path, c.summary
	if c.run != nil {
		return c.run(ctx, env, args)
	}
	if path == "sigil" && len(args) > 0 {
		switch args[0] {
		case "--version", "-version", "-v":
			return runVersion(ctx, env, args[1:])
		case "__complete":
			return runComplete(ctx, env, args[1:])
		}
	}
	if len(args) == 0 {
		printCommands(env.stdout, c, path)
		return usagef("%s needs a subcommand", path)
	}
	if isHelpArg(args[0]) {
		// `sigil help ca sign` is `sigil ca sign --help`.
		if args[0] == "help" && len(args) > 1 {
			return dispatch(ctx, env, c, append(append([]string{}, args[1:]...), "--help"), path)
		}
		printCommands(env.stdout, c, path)
		return errHelp
	}
	if sub := c.find(args[0]); sub != nil {
		return dispatch(ctx, env, sub, args[1:], path+" "+sub.name)
	}
	if strings.HasPrefix(args[0], "-") {
		return usagef("%s takes a subcommand before flags, got %q", path, args[0])
	}
	msg := fmt.Sprintf("unknown command %q for %s", args[0], path)
	if s := suggest(args[0], c.names()); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	}
	return usagef("%s", msg)
}

func (c *command) find(name string) *command {
	for _, s := range c.sub {
		if s.name == name && s.name != "help" {
			return s
		}
	}
	return nil
}

func (c *command) names() []string {
	var out []string
	for _, s := range c.sub {
		out = append(out, s.name)
	}
	return out
}

func printCommands(w io.Writer, c *command, path string) {
	fmt.Fprintf(w, "Usage: %s COMMAND [flags]\n\n%s\n\nCommands:\n", path, c.summary)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range c.sub {
		fmt.Fprintf(tw, "  %s\t%s\n", s.name, s.summary)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nRun '%s COMMAND --help' (or 'sigil help %s COMMAND') for a command's flags.\n", path, strings.TrimPrefix(strings.TrimPrefix(path, "sigil"), " "))
}

// suggest returns the candidate closest to s, if one is close enough to be
// a typo of it.
func suggest(s string, candidates []string) string {
	best, bestD := "", 0
	for _, c := range candidates {
		d := editDistance(s, c)
		if strings.HasPrefix(c, s) && len(s) >= 2 {
			d = min(d, 1)
		}
		if best == "" || d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" || bestD > max(1, len(s)/3) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance, with a transposition of two
// neighbours counted as one edit.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}
