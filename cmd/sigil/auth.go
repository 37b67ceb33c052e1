package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// authCommands are `sigil auth ...`: mount, configure and list auth
// methods, their roles and groups.
func authCommands() *command {
	return &command{name: "auth", summary: "auth methods (jwt, oidc, ldap) that exchange identities for Sigil tokens", sub: []*command{
		{name: "enable", summary: "sigil auth enable jwt|oidc|ldap [--mount NAME]", run: runAuthEnable},
		{name: "list", summary: "sigil auth list", run: runAuthList},
		{name: "disable", summary: "sigil auth disable NAME", run: runAuthDisable},
		{name: "configure", summary: "sigil auth configure NAME key=value...  (value @file reads a file)", run: runAuthConfigure},
		{name: "role", summary: "auth method roles", sub: []*command{
			{name: "write", summary: "sigil auth role write NAME/ROLE key=value...", run: runAuthRoleWrite},
			{name: "read", summary: "sigil auth role read NAME/ROLE", run: runAuthRoleRead},
			{name: "list", summary: "sigil auth role list NAME", run: runAuthRoleList},
			{name: "delete", summary: "sigil auth role delete NAME/ROLE", run: runAuthRoleDelete},
		}},
		{name: "group", summary: "map groups (LDAP groups, OIDC groups claims) to policies", sub: []*command{
			{name: "write", summary: "sigil auth group write NAME/GROUP token_policies=a,b", run: runAuthGroupWrite},
		}},
	}}
}

func authCall(ctx context.Context, fs *flag.FlagSet, cf *clientFlags, args []string, minArgs, maxArgs int,
	fn func(ctx context.Context, c sigilv1.AuthMethodServiceClient) error) error {
	return call(ctx, fs, cf, args, minArgs, maxArgs, time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
		return fn(ctx, sigilv1.NewAuthMethodServiceClient(conn))
	})
}

func runAuthEnable(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "auth enable", "sigil auth enable jwt|oidc|ldap [--mount NAME]")
	cf.register(fs, env)
	mount := fs.String("mount", "", "mount name (default: the type)")
	return authCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, c sigilv1.AuthMethodServiceClient) error {
		m := *mount
		if m == "" {
			m = fs.Arg(0)
		}
		if _, err := c.Enable(ctx, &sigilv1.EnableAuthRequest{Type: fs.Arg(0), Mount: m}); err != nil {
			return err
		}
		return cf.output(map[string]any{"type": fs.Arg(0), "mount": m}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "enabled %s auth at %s: next, sigil auth configure %s key=value...\n", fs.Arg(0), m, m)
			return err
		})
	})
}

func runAuthList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "auth list", "sigil auth list")
	cf.register(fs, env)
	return authCall(ctx, fs, &cf, args, 0, 0, func(ctx context.Context, c sigilv1.AuthMethodServiceClient) error {
		resp, err := c.List(ctx, &sigilv1.ListAuthRequest{})
		if err != nil {
			return err
		}
		type row struct {
			Mount      string `json:"mount"`
			Type       string `json:"type"`
			Configured bool   `json:"configured"`
			Roles      int32  `json:"roles"`
		}
		rows := []row{}
		for _, m := range resp.GetMounts() {
			rows = append(rows, row{m.GetMount(), m.GetType(), m.GetConfigured(), m.GetRoles()})
		}
		return cf.output(rows, func(w io.Writer) error {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "MOUNT\tTYPE\tCONFIGURED\tROLES")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%t\t%d\n", r.Mount, r.Type, r.Configured, r.Roles)
			}
			return tw.Flush()
		})
	})
}

func runAuthDisable(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "auth disable", "sigil auth disable NAME")
	cf.register(fs, env)
	return authCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, c sigilv1.AuthMethodServiceClient) error {
		resp, err := c.Disable(ctx, &sigilv1.DisableAuthRequest{Mount: fs.Arg(0)})
		if err != nil {
			return err
		}
		return cf.output(map[string]any{"mount": fs.Arg(0), "disabled": true, "revoked_tokens": resp.GetRevokedTokens()}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "disabled auth %s and revoked the %d tokens its logins issued\n", fs.Arg(0), resp.GetRevokedTokens())
			return err
		})
	})
}

func runAuthConfigure(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "auth configure", "sigil auth configure NAME key=value...  (value @file reads a file)")
	cf.register(fs, env)
	return authCall(ctx, fs, &cf, args, 2, -1, func(ctx context.Context, c sigilv1.AuthMethodServiceClient) error {
		kv, err := parseKV(fs.Args()[1:])
		if err != nil {
			return err
		}
		if _, err := c.Configure(ctx, &sigilv1.ConfigureAuthRequest{Mount: fs.Arg(0), Config: kv}); err != nil {
			return err
		}
		return cf.output(map[string]any{"mount": fs.Arg(0), "configured": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "configured auth %s\n", fs.Arg(0))
			return err
		})
	})
}

func runAuthRoleWrite(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "auth role write", "sigil auth role write NAME/ROLE key=value...  (value @file reads a file)")
	cf.register(fs, env)
	return authCall(ctx, fs, &cf, args, 2, -1, func(ctx context.Context, c sigilv1.AuthMethodServiceClient) error {
		mount, role, err := splitRolePath(fs.Arg(0))
		if err != nil {
			return err
		}
		kv, err := parseKV(fs.Args()[1:])
		if err != nil {
			return err
		}
		if _, err := c.WriteRole(ctx, &sigilv1.WriteAuthRoleRequest{Mount: mount, Role: role, Fields: kv}); err != nil {
			return err
		}
		return cf.output(map[string]any{"role": fs.Arg(0), "written": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "wrote auth role %s\n", fs.Arg(0))
			return err
		})
	})
}

func runAuthRoleRead(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "auth role read", "sigil auth role read NAME/ROLE")
	cf.register(fs, env)
	return authCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, c sigilv1.AuthMethodServiceClient) error {
		mount, role, err := splitRolePath(fs.Arg(0))
		if err != nil {
			return err
		}
		resp, err := c.ReadRole(ctx, &sigilv1.ReadAuthRoleRequest{Mount: mount, Role: role})
		if err != nil {
			return err
		}
		return cf.output(resp.GetFields(), func(w io.Writer) error { return printKV(w, resp.GetFields()) })
	})
}

func runAuthRoleList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "auth role list", "sigil auth role list NAME")
	cf.register(fs, env)
	return authCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, c sigilv1.AuthMethodServiceClient) error {
		resp, err := c.ListRoles(ctx, &sigilv1.ListAuthRolesRequest{Mount: fs.Arg(0)})
		if err != nil {
			return err
		}
		roles := resp.GetRoles()
		if roles == nil {
			roles = []string{}
		}
		return cf.output(roles, func(w io.Writer) error {
			if len(roles) == 0 {
				return nil
			}
			_, err := fmt.Fprintln(w, strings.Join(roles, "\n"))
			return err
		})
	})
}

func runAuthRoleDelete(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "auth role delete", "sigil auth role delete NAME/ROLE")
	cf.register(fs, env)
	return authCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, c sigilv1.AuthMethodServiceClient) error {
		mount, role, err := splitRolePath(fs.Arg(0))
		if err != nil {
			return err
		}
		if _, err := c.DeleteRole(ctx, &sigilv1.DeleteAuthRoleRequest{Mount: mount, Role: role}); err != nil {
			return err
		}
		return cf.output(map[string]any{"role": fs.Arg(0), "deleted": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "deleted auth role %s\n", fs.Arg(0))
			return err
		})
	})
}

func runAuthGroupWrite(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "auth group write", "sigil auth group write NAME/GROUP token_policies=a,b")
	cf.register(fs, env)
	return authCall(ctx, fs, &cf, args, 2, -1, func(ctx context.Context, c sigilv1.AuthMethodServiceClient) error {
		mount, group, err := splitRolePath(fs.Arg(0))
		if err != nil {
			return err
		}
		kv, err := parseKV(fs.Args()[1:])
		if err != nil {
			return err
		}
		if _, err := c.WriteGroup(ctx, &sigilv1.WriteAuthGroupRequest{Mount: mount, Group: group, Fields: kv}); err != nil {
			return err
		}
		return cf.output(map[string]any{"group": fs.Arg(0), "written": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "wrote auth group %s\n", fs.Arg(0))
			return err
		})
	})
}
