package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/sigil-ca/sigil/agent"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// agentCommand is `sigil agent` (run the node agent) with its
// subcommands: `entry` (registration entries, on the server) and
// `render` (templates with the CLI's credentials). run handles both: the
// subcommands are in sub as well for help and shell completion.
func agentCommand() *command {
	return &command{name: "agent", summary: "run the node agent (SPIFFE Workload API, templates), manage its registration entries (sigil agent entry create|list|delete), or render templates with the CLI's credentials (sigil agent render)",
		run: runAgent, sub: agentSubcommands()}
}

func agentSubcommands() []*command {
	return []*command{
		{name: "entry", summary: "registration entries: which workloads on which node get which SPIFFE ID", sub: []*command{
			{name: "create", summary: "sigil agent entry create --parent NODE-ID --spiffe-id ID --selector unix:uid:N [--selector ...] [--ttl D]", run: runAgentEntryCreate},
			{name: "list", summary: "sigil agent entry list [--parent NODE-ID]", run: runAgentEntryList},
			{name: "delete", summary: "sigil agent entry delete ID", run: runAgentEntryDelete},
		}},
		{name: "jwt-key", summary: "the key that signs JWT-SVIDs (rotated weekly on its own)", sub: []*command{
			{name: "rotate", summary: "sigil agent jwt-key rotate [--retire-previous]: a new key signs from now; with --retire-previous the old keys leave the bundle at once (suspected compromise)", run: runAgentJWTKeyRotate},
		}},
		{name: "render", summary: "render agent.yaml templates to files on tmpfs with the CLI's credentials and keep them current: sigil agent render --config FILE [--once]", run: runRender},
	}
}

func runAgent(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return dispatch(ctx, env, &command{name: "agent", summary: env.summary, sub: agentSubcommands()}, args, "sigil agent")
	}
	fs := newFlagSet(env, "agent", "sigil agent --server HOST:PORT --cacert FILE --data DIR --socket PATH [--join-token T --spiffe-id ID] [--config agent.yaml]")
	configFile := fs.String("config", "", "agent.yaml; flags given on the command line override it")
	server := fs.String("server", "", "the Sigil server's gRPC address HOST:PORT")
	cacert := fs.String("cacert", "", "PEM file of the CA that verifies the server")
	data := fs.String("data", "", "directory that keeps the node SVID and its key (0600)")
	socket := fs.String("socket", "", "Workload API unix socket (its directory must not be world-writable)")
	tok := env.getenv("SIGIL_JOIN_TOKEN")
	fs.Var(secretValue{&tok}, "join-token", "one-time join token for the first start ("+envState(env, "SIGIL_JOIN_TOKEN")+")")
	spiffeID := fs.String("spiffe-id", "", "the node's SPIFFE ID (the join token's)")
	health := fs.String("health-addr", "", "serve /healthz and /metrics on this local address (e.g. 127.0.0.1:8089)")
	syncEvery := fs.Duration("sync-interval", 0, "how often to fetch registration entries (default 5s)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	var cfg agent.Config
	if *configFile != "" {
		var err error
		if cfg, err = agent.Load(*configFile); err != nil {
			return err
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	override := func(name string, dst *string, v string) {
		if set[name] || *dst == "" {
			*dst = v
		}
	}
	override("server", &cfg.Server, *server)
	override("cacert", &cfg.CACert, *cacert)
	override("data", &cfg.DataDir, *data)
	override("socket", &cfg.Socket, *socket)
	override("spiffe-id", &cfg.SPIFFEID, *spiffeID)
	override("health-addr", &cfg.HealthAddr, *health)
	if set["sync-interval"] || cfg.SyncInterval == 0 {
		cfg.SyncInterval = *syncEvery
	}
	cfg.JoinToken = tok
	if cfg.Server == "" || cfg.CACert == "" || cfg.DataDir == "" || cfg.Socket == "" {
		return usagef("--server, --cacert, --data and --socket are required (flags or --config)")
	}
	if cfg.JoinToken != "" && cfg.SPIFFEID == "" {
		return usagef("--join-token needs --spiffe-id")
	}
	log := slog.New(slog.NewTextHandler(env.stderr, nil))
	a, err := agent.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

func runAgentEntryCreate(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "agent entry create", "sigil agent entry create --parent NODE-ID --spiffe-id ID --selector unix:uid:N [--selector unix:gid:N|unix:path:/BIN|unix:sha256:HEX] [--ttl D]")
	cf.register(fs, env)
	parent := fs.String("parent", "", "the node's SPIFFE ID: only its agent may obtain this identity")
	id := fs.String("spiffe-id", "", "the workload's SPIFFE ID")
	var selectors stringList
	fs.Var(&selectors, "selector", "unix:uid:N, unix:gid:N, unix:path:/ABS/PATH or unix:sha256:HEX (repeatable; a process must match all)")
	ttl := ttlFlag(fs, "ttl", 0, minCertTTL, maxCertTTL, "X.509-SVID lifetime, capped by the workload profile (default: the profile's)")
	return connCall(ctx, fs, &cf, args, 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		if *parent == "" || *id == "" || len(selectors) == 0 {
			return usagef("--parent, --spiffe-id and at least one --selector are required")
		}
		e, err := sigilv1.NewAgentServiceClient(conn).CreateEntry(ctx, &sigilv1.CreateEntryRequest{ParentId: *parent, SpiffeId: *id,
			Selectors: selectors, TtlSeconds: int64(*ttl / time.Second)})
		if err != nil {
			return err
		}
		return cf.output(entryView(e), func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "created entry %s: %s on %s\n", e.GetId(), e.GetSpiffeId(), e.GetParentId())
			return err
		})
	})
}

func entryView(e *sigilv1.RegistrationEntry) map[string]any {
	return map[string]any{"id": e.GetId(), "parent_id": e.GetParentId(), "spiffe_id": e.GetSpiffeId(),
		"selectors": e.GetSelectors(), "ttl_seconds": e.GetTtlSeconds(), "created_at": time.Unix(e.GetCreatedAtUnix(), 0).UTC()}
}

func runAgentEntryList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "agent entry list", "sigil agent entry list [--parent NODE-ID]")
	cf.register(fs, env)
	parent := fs.String("parent", "", "only the entries of this node")
	return connCall(ctx, fs, &cf, args, 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewAgentServiceClient(conn).ListEntries(ctx, &sigilv1.ListEntriesRequest{ParentId: *parent})
		if err != nil {
			return err
		}
		views := []map[string]any{}
		for _, e := range resp.GetEntries() {
			views = append(views, entryView(e))
		}
		return cf.output(views, func(w io.Writer) error {
			for _, e := range resp.GetEntries() {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.GetId(), e.GetSpiffeId(), e.GetParentId(), strings.Join(e.GetSelectors(), ","))
			}
			return nil
		})
	})
}

func runAgentEntryDelete(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "agent entry delete", "sigil agent entry delete ID")
	cf.register(fs, env)
	return connCall(ctx, fs, &cf, args, 1, func(ctx context.Context, conn *grpc.ClientConn) error {
		if _, err := sigilv1.NewAgentServiceClient(conn).DeleteEntry(ctx, &sigilv1.DeleteEntryRequest{Id: fs.Arg(0)}); err != nil {
			return err
		}
		return cf.output(map[string]any{"id": fs.Arg(0), "deleted": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "deleted entry %s\n", fs.Arg(0))
			return err
		})
	})
}

func runAgentJWTKeyRotate(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "agent jwt-key rotate", "sigil agent jwt-key rotate [--retire-previous]")
	cf.register(fs, env)
	retire := fs.Bool("retire-previous", false, "drop the older keys from the bundle now: JWT-SVIDs they signed stop validating as agents sync (default: they stay until those tokens expire)")
	return connCall(ctx, fs, &cf, args, 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewAgentServiceClient(conn).RotateJWTKey(ctx, &sigilv1.RotateJWTKeyRequest{RetirePrevious: *retire})
		if err != nil {
			return err
		}
		views := []map[string]any{}
		for _, k := range resp.GetKeys() {
			views = append(views, map[string]any{"kid": k.GetKid(), "name": k.GetName(), "active": k.GetActive(),
				"active_from": time.Unix(k.GetActiveFromUnix(), 0).UTC()})
		}
		return cf.output(views, func(w io.Writer) error {
			for _, k := range resp.GetKeys() {
				state := "published"
				if k.GetActive() {
					state = "signing"
				}
				if _, err := fmt.Fprintf(w, "%s  %-9s  %s  from %s\n", k.GetKid(), state, k.GetName(), time.Unix(k.GetActiveFromUnix(), 0).UTC().Format(time.RFC3339)); err != nil {
					return err
				}
			}
			return nil
		})
	})
}
