package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// runTokenIntrospect asks whether a token minted by a tokens engine is
// active. TOKEN "-" reads it from stdin so it never sits in shell history.
func runTokenIntrospect(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "token introspect", "sigil token introspect TOKEN  (- reads stdin)")
	cf.register(fs, env)
	return call(ctx, fs, &cf, args, 1, 1, 30*time.Second, func(ctx context.Context, conn *grpc.ClientConn) error {
		tok := fs.Arg(0)
		if tok == "-" {
			b, err := io.ReadAll(io.LimitReader(env.stdin, 16<<10))
			if err != nil {
				return err
			}
			tok = strings.TrimSpace(string(b))
		}
		resp, err := sigilv1.NewTokensServiceClient(conn).Introspect(ctx, &sigilv1.IntrospectRequest{Token: tok})
		if err != nil {
			return err
		}
		// RFC 7662 §2.2 names; an inactive token has nothing else.
		out := map[string]any{"active": resp.GetActive()}
		if resp.GetActive() {
			out["token_type"] = resp.GetTokenType()
			out["scope"] = strings.Join(resp.GetScopes(), " ")
			out["aud"] = resp.GetAudience()
			out["sub"] = resp.GetSubject()
			out["iss"] = resp.GetIssuer()
			out["iat"] = resp.GetIssuedAtUnix()
			out["exp"] = resp.GetExpiresAtUnix()
			out["lease_id"] = resp.GetLeaseId()
		}
		return cf.output(out, func(w io.Writer) error {
			if !resp.GetActive() {
				_, err := fmt.Fprintln(w, "active      false")
				return err
			}
			_, err := fmt.Fprintf(w, "active      true\ntoken_type  %s\nscopes      %s\naudience    %s\nsubject     %s\nissuer      %s\nexpires_at  %s\nlease_id    %s\n",
				resp.GetTokenType(), strings.Join(resp.GetScopes(), " "), strings.Join(resp.GetAudience(), ","), resp.GetSubject(),
				resp.GetIssuer(), time.Unix(resp.GetExpiresAtUnix(), 0).UTC().Format(time.RFC3339), resp.GetLeaseId())
			return err
		})
	})
}

// printWarnings prints what the server changed from the request (a capped
// TTL or use count), sent in the sigil-warning response header.
func printWarnings(env *cliEnv, md metadata.MD) {
	for _, w := range md.Get("sigil-warning") {
		fmt.Fprintf(env.stderr, "warning: %s\n", w)
	}
}

// runTokenRenew extends a renewable token (one from a login whose role has
// a token_max_ttl above its token_ttl) within its max: with no ID the
// calling token renews itself, which needs no grant.
func runTokenRenew(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "token renew", "sigil token renew [--increment D] [ID]  (no ID: the calling token)")
	cf.register(fs, env)
	inc := ttlFlag(fs, "increment", 0, minTTL, maxCertTTL, "how long from now the token should live (default: its original TTL; never past its max TTL)")
	return call(ctx, fs, &cf, args, 0, 1, 30*time.Second, func(ctx context.Context, conn *grpc.ClientConn) error {
		var md metadata.MD
		resp, err := sigilv1.NewTokenServiceClient(conn).Renew(ctx, &sigilv1.RenewTokenRequest{Id: fs.Arg(0),
			IncrementSeconds: int64(*inc / time.Second)}, grpc.Header(&md))
		if err != nil {
			return err
		}
		printWarnings(env, md)
		info := resp.GetInfo()
		view := tokenView("", info)
		maxExp := time.Unix(resp.GetMaxExpiresAtUnix(), 0).UTC()
		view["max_expires_at"] = maxExp
		view["warnings"] = resp.GetWarnings()
		return cf.output(view, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "id              %s\nexpires_at      %s\nmax_expires_at  %s\n", info.GetId(),
				time.Unix(info.GetExpiresAtUnix(), 0).UTC().Format(time.RFC3339), maxExp.Format(time.RFC3339))
			return err
		})
	})
}
