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
