package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

func runACMEEABCreate(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "acme eab create", "sigil acme eab create [--provisioner NAME] [--description D] [--ttl D] [--dns-suffix S]...")
	cf.register(fs, env, true)
	prov := fs.String("provisioner", "", "ACME provisioner (default: the default one)")
	desc := fs.String("description", "", "who the key is for")
	ttl := fs.Duration("ttl", 0, "how long the unused key is accepted (default: no limit)")
	var suffixes stringList
	fs.Var(&suffixes, "dns-suffix", "restrict the bound account to this domain (repeatable)")
	wrapTTL := fs.Duration("wrap-ttl", 0, "return a single-use wrapping token instead of the key (sigil unwrap)")
	return connCall(ctx, fs, &cf, args, 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		wrapSecs, err := wrapTTLSeconds(*wrapTTL)
		if err != nil {
			return err
		}
		if wrapSecs > 0 {
			resp, err := sigilv1.NewACMEServiceClient(conn).CreateEAB(ctx, &sigilv1.CreateEABRequest{Provisioner: *prov, Description: *desc,
				TtlSeconds: int64(ttl.Seconds()), DnsSuffixes: suffixes, WrapTtlSeconds: wrapSecs})
			if err != nil {
				return err
			}
			return printWrapped(env, cf.format, resp.GetWrapToken(), resp.GetWrapExpiresAtUnix())
		}
		k, err := newOneCallKey()
		if err != nil {
			return err
		}
		resp, err := sigilv1.NewACMEServiceClient(conn).CreateEAB(ctx, &sigilv1.CreateEABRequest{Provisioner: *prov, Description: *desc,
			TtlSeconds: int64(ttl.Seconds()), DnsSuffixes: suffixes, Recipient: k.Recipient})
		if err != nil {
			return err
		}
		data, err := k.open(resp.GetEnvelope(), resp.GetKeyId(), "EAB key")
		if err != nil {
			return err
		}
		if cf.format == "json" {
			return printJSON(env.stdout, map[string]any{"key_id": resp.GetKeyId(), "hmac_key": data["hmac_key"], "provisioner": resp.GetProvisioner()})
		}
		fmt.Fprintf(env.stdout, "key_id    %s\nhmac_key  %s\n(shown once; give both to the ACME client, e.g. certbot --eab-kid/--eab-hmac-key)\n", resp.GetKeyId(), data["hmac_key"])
		return nil
	})
}

func runACMEEABList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "acme eab list", "sigil acme eab list [--provisioner NAME]")
	cf.register(fs, env, true)
	prov := fs.String("provisioner", "", "only this provisioner")
	return connCall(ctx, fs, &cf, args, 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewACMEServiceClient(conn).ListEAB(ctx, &sigilv1.ListEABRequest{Provisioner: *prov})
		if err != nil {
			return err
		}
		if cf.format == "json" {
			rows := []map[string]any{}
			for _, k := range resp.GetKeys() {
				rows = append(rows, map[string]any{"key_id": k.GetKeyId(), "provisioner": k.GetProvisioner(), "status": k.GetStatus(),
					"description": k.GetDescription(), "account_id": k.GetAccountId(), "created_at": time.Unix(k.GetCreatedAtUnix(), 0).UTC()})
			}
			return printJSON(env.stdout, rows)
		}
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY ID\tPROVISIONER\tSTATUS\tACCOUNT\tDESCRIPTION")
		for _, k := range resp.GetKeys() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.GetKeyId(), k.GetProvisioner(), k.GetStatus(), k.GetAccountId(), k.GetDescription())
		}
		return tw.Flush()
	})
}

func runACMEEABRevoke(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "acme eab revoke", "sigil acme eab revoke KEY-ID")
	cf.register(fs, env, false)
	return connCall(ctx, fs, &cf, args, 1, func(ctx context.Context, conn *grpc.ClientConn) error {
		if _, err := sigilv1.NewACMEServiceClient(conn).RevokeEAB(ctx, &sigilv1.RevokeEABRequest{KeyId: fs.Arg(0)}); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "revoked EAB key %s\n", fs.Arg(0))
		return nil
	})
}

func runACMEAccountsList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "acme accounts list", "sigil acme accounts list [--provisioner NAME]")
	cf.register(fs, env, true)
	prov := fs.String("provisioner", "", "only this provisioner")
	return connCall(ctx, fs, &cf, args, 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewACMEServiceClient(conn).ListAccounts(ctx, &sigilv1.ListACMEAccountsRequest{Provisioner: *prov})
		if err != nil {
			return err
		}
		if cf.format == "json" {
			rows := []map[string]any{}
			for _, a := range resp.GetAccounts() {
				rows = append(rows, map[string]any{"id": a.GetId(), "provisioner": a.GetProvisioner(), "status": a.GetStatus(),
					"contact": a.GetContact(), "eab_key_id": a.GetEabKeyId(), "created_at": time.Unix(a.GetCreatedAtUnix(), 0).UTC()})
			}
			return printJSON(env.stdout, rows)
		}
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tPROVISIONER\tSTATUS\tEAB KEY")
		for _, a := range resp.GetAccounts() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.GetId(), a.GetProvisioner(), a.GetStatus(), a.GetEabKeyId())
		}
		return tw.Flush()
	})
}

func runACMEAccountsDeactivate(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "acme accounts deactivate", "sigil acme accounts deactivate ID")
	cf.register(fs, env, false)
	return connCall(ctx, fs, &cf, args, 1, func(ctx context.Context, conn *grpc.ClientConn) error {
		if _, err := sigilv1.NewACMEServiceClient(conn).DeactivateAccount(ctx, &sigilv1.DeactivateACMEAccountRequest{Id: fs.Arg(0)}); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "deactivated ACME account %s\n", fs.Arg(0))
		return nil
	})
}
