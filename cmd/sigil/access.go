package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/sigil-ca/sigil/audit"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// maxPolicyFile bounds a policy document read by the CLI.
const maxPolicyFile = 64 << 10

func runPolicyWrite(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "policy write", "sigil policy write NAME FILE  (- reads stdin)")
	cf.register(fs, env)
	return connCall(ctx, fs, &cf, args, 2, func(ctx context.Context, conn *grpc.ClientConn) error {
		var r io.Reader = env.stdin
		if fs.Arg(1) != "-" {
			f, err := os.Open(fs.Arg(1))
			if err != nil {
				return err
			}
			defer f.Close()
			r = f
		}
		doc, err := io.ReadAll(io.LimitReader(r, maxPolicyFile+1))
		if err != nil {
			return err
		}
		if len(doc) > maxPolicyFile {
			return fmt.Errorf("%s is larger than %d bytes", fs.Arg(1), maxPolicyFile)
		}
		if _, err := sigilv1.NewPolicyServiceClient(conn).Write(ctx, &sigilv1.WritePolicyRequest{Name: fs.Arg(0), Document: doc}); err != nil {
			return err
		}
		return cf.output(map[string]any{"policy": fs.Arg(0), "written": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "wrote policy %s\n", fs.Arg(0))
			return err
		})
	})
}

func runPolicyRead(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "policy read", "sigil policy read NAME")
	cf.register(fs, env)
	return connCall(ctx, fs, &cf, args, 1, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewPolicyServiceClient(conn).Read(ctx, &sigilv1.ReadPolicyRequest{Name: fs.Arg(0)})
		if err != nil {
			return err
		}
		return cf.output(map[string]any{"name": fs.Arg(0), "document": string(resp.GetDocument())}, func(w io.Writer) error {
			_, err := w.Write(resp.GetDocument())
			return err
		})
	})
}

func runPolicyList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "policy list", "sigil policy list")
	cf.register(fs, env)
	return connCall(ctx, fs, &cf, args, 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewPolicyServiceClient(conn).List(ctx, &sigilv1.ListPoliciesRequest{})
		if err != nil {
			return err
		}
		return cf.output(append([]string{}, resp.GetNames()...), func(w io.Writer) error {
			for _, n := range resp.GetNames() {
				fmt.Fprintln(w, n)
			}
			return nil
		})
	})
}

func runPolicyDelete(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "policy delete", "sigil policy delete NAME")
	cf.register(fs, env)
	return connCall(ctx, fs, &cf, args, 1, func(ctx context.Context, conn *grpc.ClientConn) error {
		if _, err := sigilv1.NewPolicyServiceClient(conn).Delete(ctx, &sigilv1.DeletePolicyRequest{Name: fs.Arg(0)}); err != nil {
			return err
		}
		return cf.output(map[string]any{"policy": fs.Arg(0), "deleted": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "deleted policy %s\n", fs.Arg(0))
			return err
		})
	})
}

func runPolicyTest(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "policy test", "sigil policy test [--identity SPIFFE-ID] [--policy P]... --path P --capability C")
	cf.register(fs, env)
	identity := fs.String("identity", "", "SPIFFE ID whose bound policies apply")
	var policies stringList
	fs.Var(&policies, "policy", "a policy the identity holds (repeatable), as a token would carry")
	path := fs.String("path", "", "request path, e.g. db/creds/payments-ro")
	capability := fs.String("capability", "read", "read, create, update, delete, list or sudo")
	exitCode := fs.Bool("exit-code", false, "exit 2 when the request would be denied (for scripts)")
	return connCall(ctx, fs, &cf, args, 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		if *path == "" {
			return usagef("--path is required")
		}
		resp, err := sigilv1.NewPolicyServiceClient(conn).Test(ctx, &sigilv1.TestPolicyRequest{
			SpiffeId: *identity, Policies: policies, Path: *path, Capability: *capability})
		if err != nil {
			return err
		}
		err = cf.output(map[string]any{"allowed": resp.GetAllowed(), "explanation": resp.GetExplanation()}, func(w io.Writer) error {
			_, err := fmt.Fprintln(w, strings.TrimRight(resp.GetExplanation(), "\n"))
			return err
		})
		if err == nil && *exitCode && !resp.GetAllowed() {
			return &exitError{code: 2}
		}
		return err
	})
}

func tokenView(token string, info *sigilv1.TokenInfo) map[string]any {
	view := map[string]any{"id": info.GetId(), "policies": info.GetPolicies(), "uses_left": info.GetUsesLeft(),
		"created_at": time.Unix(info.GetCreatedAtUnix(), 0).UTC()}
	if info.GetExpiresAtUnix() != 0 {
		view["expires_at"] = time.Unix(info.GetExpiresAtUnix(), 0).UTC()
	}
	if token != "" {
		view["token"] = token
	}
	return view
}

func printTokenInfo(cf *clientFlags, view map[string]any, info *sigilv1.TokenInfo) error {
	return cf.output(view, func(w io.Writer) error {
		rows := map[string]string{"id": info.GetId(), "policies": strings.Join(info.GetPolicies(), ",")}
		if t, ok := view["token"].(string); ok {
			rows["token"] = t
		}
		if e, ok := view["expires_at"].(time.Time); ok {
			rows["expires_at"] = e.Format(time.RFC3339)
		} else {
			rows["expires_at"] = "never"
		}
		if info.GetUsesLeft() > 0 {
			rows["uses_left"] = fmt.Sprint(info.GetUsesLeft())
		}
		return printKV(w, rows)
	})
}

func runTokenCreate(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "token create", "sigil token create --policy P [--policy P2] [--ttl D [--max-ttl D]] [--uses N]")
	cf.register(fs, env)
	var policies stringList
	fs.Var(&policies, "policy", "policy the token carries (repeatable)")
	ttl := ttlFlag(fs, "ttl", 0, minTTL, maxCertTTL, "lifetime (default: the server's tokens.max_ttl; never longer than the creating token's)")
	maxTTL := ttlFlag(fs, "max-ttl", 0, minTTL, maxCertTTL, "make the token renewable (sigil token renew) up to this long after creation; needs --ttl at or below it")
	uses := fs.Int("uses", 0, "number of uses (default: unlimited)")
	wrapTTL := ttlFlag(fs, "wrap-ttl", 0, minTTL, maxBootstrapTTL, "return a single-use wrapping token instead of the token (sigil unwrap)")
	return connCall(ctx, fs, &cf, args, 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		if len(policies) == 0 {
			return usagef("--policy is required")
		}
		ttlSecs, wrapSecs := int64(*ttl/time.Second), int64(*wrapTTL/time.Second)
		if *uses < 0 || *uses > math.MaxInt32 {
			return usagef("--uses %d: must be between 0 (unlimited) and %d", *uses, math.MaxInt32)
		}
		req := &sigilv1.CreateTokenRequest{Policies: policies, TtlSeconds: ttlSecs, Uses: int32(*uses), WrapTtlSeconds: wrapSecs,
			MaxTtlSeconds: int64(*maxTTL / time.Second)}
		var k *oneCallKey
		if wrapSecs == 0 {
			var err error
			if k, err = newOneCallKey(); err != nil {
				return err
			}
			req.Recipient = k.Recipient
		}
		sent := time.Now()
		var md metadata.MD
		resp, err := sigilv1.NewTokenServiceClient(conn).Create(ctx, req, grpc.Header(&md))
		if err != nil {
			return err
		}
		printWarnings(env, md)
		if resp.GetWrapToken() != "" {
			return printWrapped(&cf, nil, resp.GetWrapToken(), *wrapTTL, sent, resp.GetWrapExpiresAtUnix())
		}
		data, err := k.open(resp.GetEnvelope(), resp.GetInfo().GetId(), "token")
		if err != nil {
			return err
		}
		view := tokenView(data["token"], resp.GetInfo())
		ttlReport(env.stderr, view, "--ttl", *ttl, sent, resp.GetInfo().GetExpiresAtUnix())
		return printTokenInfo(&cf, view, resp.GetInfo())
	})
}

func runTokenLookup(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "token lookup", "sigil token lookup [ID]  (no ID: the calling token)")
	cf.register(fs, env)
	return call(ctx, fs, &cf, args, 0, 1, 30*time.Second, func(ctx context.Context, conn *grpc.ClientConn) error {
		info, err := sigilv1.NewTokenServiceClient(conn).Lookup(ctx, &sigilv1.LookupTokenRequest{Id: fs.Arg(0)})
		if err != nil {
			return err
		}
		return printTokenInfo(&cf, tokenView("", info), info)
	})
}

func runTokenRevoke(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "token revoke", "sigil token revoke ID")
	cf.register(fs, env)
	return connCall(ctx, fs, &cf, args, 1, func(ctx context.Context, conn *grpc.ClientConn) error {
		if _, err := sigilv1.NewTokenServiceClient(conn).Revoke(ctx, &sigilv1.RevokeTokenRequest{Id: fs.Arg(0)}); err != nil {
			return err
		}
		return cf.output(map[string]any{"id": fs.Arg(0), "revoked": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "revoked token %s\n", fs.Arg(0))
			return err
		})
	})
}

func runAuditVerify(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "audit verify", "sigil audit verify [FILE]  (no FILE: the server's database log)")
	cf.register(fs, env)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usagef("audit verify takes at most one FILE")
	}
	if fs.NArg() == 1 {
		// An audit file is checked here, offline: the chain needs no server.
		f, err := os.Open(fs.Arg(0))
		if err != nil {
			return err
		}
		defer f.Close()
		rep, err := audit.VerifyFile(f, audit.VerifyOptions{})
		if err != nil {
			return fmt.Errorf("%s: %w", fs.Arg(0), err)
		}
		if err := cf.validate(); err != nil {
			return err
		}
		return cf.output(map[string]any{"ok": true, "file": fs.Arg(0), "records": rep.Records, "head_seq": rep.Head.Seq,
			"head_hash": fmt.Sprintf("%x", rep.Head.Hash)}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "%s intact: %d records, head %d %x\n", fs.Arg(0), rep.Records, rep.Head.Seq, rep.Head.Hash)
			return err
		})
	}
	return connCall(ctx, fs, &cf, fs.Args(), 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewAuditServiceClient(conn).Verify(ctx, &sigilv1.VerifyAuditRequest{})
		if err != nil {
			return err
		}
		if err := cf.output(map[string]any{"ok": resp.GetOk(), "records": resp.GetRecords(), "head_seq": resp.GetHeadSeq(),
			"head_hash": resp.GetHeadHash(), "bad_seq": resp.GetBadSeq(), "problem": resp.GetProblem()}, func(w io.Writer) error {
			if resp.GetOk() {
				fmt.Fprintf(w, "audit log intact: %d records, head %d %s\n", resp.GetRecords(), resp.GetHeadSeq(), resp.GetHeadHash())
			}
			return nil
		}); err != nil {
			return err
		}
		if !resp.GetOk() {
			return fmt.Errorf("audit log tampered at record %d: %s", resp.GetBadSeq(), resp.GetProblem())
		}
		return nil
	})
}

func runAuditHash(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "audit hash", "sigil audit hash VALUE  (the HMAC the audit log records for VALUE)")
	cf.register(fs, env)
	return connCall(ctx, fs, &cf, args, 1, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewAuditServiceClient(conn).Hash(ctx, &sigilv1.HashAuditRequest{Value: fs.Arg(0)})
		if err != nil {
			return err
		}
		return cf.output(map[string]any{"hash": resp.GetHash()}, func(w io.Writer) error {
			_, err := fmt.Fprintln(w, resp.GetHash())
			return err
		})
	})
}

// printWrapped prints a wrapping token returned instead of a secret, with
// the same key names in text and JSON, and warns when the server granted
// less than --wrap-ttl.
func printWrapped(cf *clientFlags, view map[string]any, token string, wrapTTL time.Duration, sent time.Time, expires int64) error {
	if view == nil {
		view = map[string]any{}
	}
	view["wrap_token"] = token
	view["wrap_expires_at"] = time.Unix(expires, 0).UTC()
	ttlReport(cf.env.stderr, view, "--wrap-ttl", wrapTTL, sent, expires)
	return cf.output(view, func(w io.Writer) error {
		rows := map[string]string{"wrap_token": token, "wrap_expires_at": time.Unix(expires, 0).UTC().Format(time.RFC3339)}
		if id, ok := view["lease_id"].(string); ok {
			rows["lease_id"] = id
		}
		if err := printKV(w, rows); err != nil {
			return err
		}
		_, err := fmt.Fprintln(w, "(sigil unwrap returns the secret once)")
		return err
	})
}
