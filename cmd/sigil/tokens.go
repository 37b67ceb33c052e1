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
	cf.register(fs, env, true)
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
		if cf.format == "json" {
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
			return printJSON(env.stdout, out)
		}
		if !resp.GetActive() {
			fmt.Fprintln(env.stdout, "active      false")
			return nil
		}
		fmt.Fprintf(env.stdout, "active      true\ntoken_type  %s\nscopes      %s\naudience    %s\nsubject     %s\nissuer      %s\nexpires_at  %s\nlease_id    %s\n",
			resp.GetTokenType(), strings.Join(resp.GetScopes(), " "), strings.Join(resp.GetAudience(), ","), resp.GetSubject(),
			resp.GetIssuer(), time.Unix(resp.GetExpiresAtUnix(), 0).UTC().Format(time.RFC3339), resp.GetLeaseId())
		return nil
	})
}

// wrapTTLSeconds converts --wrap-ttl for the wire. Zero (the default) means
// "return the secret itself"; anything else must be at least one second.
// A negative or sub-second value used to read as zero, so a caller who
// asked for wrapping got the secret printed in clear.
func wrapTTLSeconds(d time.Duration) (int64, error) {
	switch {
	case d < 0:
		return 0, usagef("--wrap-ttl %v: must be positive (omit it to receive the secret itself)", d)
	case d > 0 && d < time.Second:
		return 0, usagef("--wrap-ttl %v: must be at least 1s", d)
	}
	return int64(d / time.Second), nil
}

// ttlSeconds converts a --ttl flag for the wire, refusing what would
// silently turn into "the default": negative and sub-second values.
func ttlSeconds(flag string, d time.Duration) (int64, error) {
	switch {
	case d < 0:
		return 0, usagef("--%s %v: must not be negative", flag, d)
	case d > 0 && d < time.Second:
		return 0, usagef("--%s %v: must be at least 1s (0 means the default)", flag, d)
	}
	return int64(d / time.Second), nil
}

// printWarnings prints what the server changed from the request (a capped
// TTL or use count), sent in the sigil-warning response header.
func printWarnings(env *cliEnv, md metadata.MD) {
	for _, w := range md.Get("sigil-warning") {
		fmt.Fprintf(env.stderr, "warning: %s\n", w)
	}
}
