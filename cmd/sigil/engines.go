package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"

	"github.com/sigil-ca/sigil/envelope"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// engCall runs fn with engine and lease clients (see call); minting can
// wait on a database, so it gets two minutes.
func engCall(ctx context.Context, fs *flag.FlagSet, cf *clientFlags, args []string, minArgs, maxArgs int,
	fn func(ctx context.Context, e sigilv1.EngineServiceClient, l sigilv1.LeaseServiceClient) error) error {
	return call(ctx, fs, cf, args, minArgs, maxArgs, 2*time.Minute, func(ctx context.Context, conn *grpc.ClientConn) error {
		return fn(ctx, sigilv1.NewEngineServiceClient(conn), sigilv1.NewLeaseServiceClient(conn))
	})
}

// splitRolePath splits MOUNT/ROLE at the last slash.
func splitRolePath(p string) (mount, role string, err error) {
	i := strings.LastIndex(p, "/")
	if i <= 0 || i == len(p)-1 {
		return "", "", usagef("%q: expected MOUNT/ROLE", p)
	}
	return p[:i], p[i+1:], nil
}

// maxValueFile bounds a value read from @file.
const maxValueFile = 1 << 20

// parseKV parses key=value arguments; a value @file is read from the file.
func parseKV(args []string) (map[string]string, error) {
	out := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, usagef("%q: expected key=value", a)
		}
		if path, ok := strings.CutPrefix(v, "@"); ok {
			f, err := os.Open(path)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			b, err := io.ReadAll(io.LimitReader(f, maxValueFile+1))
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			if len(b) > maxValueFile {
				return nil, fmt.Errorf("%s: %s is larger than %d bytes", k, path, maxValueFile)
			}
			v = string(b)
		}
		out[k] = v
	}
	return out, nil
}

func runEngineEnable(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "engine enable", "sigil engine enable TYPE --mount PATH")
	cf.register(fs, env)
	mount := fs.String("mount", "", "mount path (default: the type)")
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		m := *mount
		if m == "" {
			m = fs.Arg(0)
		}
		if _, err := e.Enable(ctx, &sigilv1.EnableEngineRequest{Type: fs.Arg(0), Mount: m}); err != nil {
			return err
		}
		return cf.output(map[string]any{"type": fs.Arg(0), "mount": m}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "enabled %s at %s\n", fs.Arg(0), m)
			return err
		})
	})
}

func runEngineList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "engine list", "sigil engine list")
	cf.register(fs, env)
	return engCall(ctx, fs, &cf, args, 0, 0, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		resp, err := e.List(ctx, &sigilv1.ListEnginesRequest{})
		if err != nil {
			return err
		}
		type row struct {
			Mount        string `json:"mount"`
			Type         string `json:"type"`
			ActiveLeases int64  `json:"active_leases"`
		}
		rows := []row{}
		for _, m := range resp.GetEngines() {
			rows = append(rows, row{m.GetMount(), m.GetType(), m.GetActiveLeases()})
		}
		return cf.output(rows, func(w io.Writer) error {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "MOUNT\tTYPE\tACTIVE LEASES")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%d\n", r.Mount, r.Type, r.ActiveLeases)
			}
			return tw.Flush()
		})
	})
}

func runEngineDisable(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "engine disable", "sigil engine disable [--revoke-leases] PATH")
	cf.register(fs, env)
	revoke := fs.Bool("revoke-leases", false, "revoke the mount's active leases first")
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		if _, err := e.Disable(ctx, &sigilv1.DisableEngineRequest{Mount: fs.Arg(0), RevokeLeases: *revoke}); err != nil {
			return err
		}
		return cf.output(map[string]any{"mount": fs.Arg(0), "disabled": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "disabled %s\n", fs.Arg(0))
			return err
		})
	})
}

func runEngineConfigure(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "engine configure", "sigil engine configure PATH key=value...  (value @file reads a file)")
	cf.register(fs, env)
	return engCall(ctx, fs, &cf, args, 2, -1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		kv, err := parseKV(fs.Args()[1:])
		if err != nil {
			return err
		}
		if _, err := e.Configure(ctx, &sigilv1.ConfigureEngineRequest{Mount: fs.Arg(0), Config: kv}); err != nil {
			return err
		}
		return cf.output(map[string]any{"mount": fs.Arg(0), "configured": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "configured %s\n", fs.Arg(0))
			return err
		})
	})
}

func runEngineRotateRoot(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "engine rotate-root", "sigil engine rotate-root PATH")
	cf.register(fs, env)
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		if _, err := e.RotateRoot(ctx, &sigilv1.RotateRootRequest{Mount: fs.Arg(0)}); err != nil {
			return err
		}
		return cf.output(map[string]any{"mount": fs.Arg(0), "rotated": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "rotated the root credential of %s\n", fs.Arg(0))
			return err
		})
	})
}

func runRoleWrite(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "role write", "sigil role write MOUNT/ROLE key=value...  (value @file reads a file)")
	cf.register(fs, env)
	return engCall(ctx, fs, &cf, args, 1, -1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		mount, role, err := splitRolePath(fs.Arg(0))
		if err != nil {
			return err
		}
		kv, err := parseKV(fs.Args()[1:])
		if err != nil {
			return err
		}
		if _, err := e.WriteRole(ctx, &sigilv1.WriteRoleRequest{Mount: mount, Role: role, Fields: kv}); err != nil {
			return err
		}
		return cf.output(map[string]any{"role": fs.Arg(0), "written": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "wrote role %s\n", fs.Arg(0))
			return err
		})
	})
}

func runRoleRead(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "role read", "sigil role read MOUNT/ROLE")
	cf.register(fs, env)
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		mount, role, err := splitRolePath(fs.Arg(0))
		if err != nil {
			return err
		}
		resp, err := e.ReadRole(ctx, &sigilv1.ReadRoleRequest{Mount: mount, Role: role})
		if err != nil {
			return err
		}
		return cf.output(resp.GetFields(), func(w io.Writer) error {
			return printKV(w, resp.GetFields())
		})
	})
}

func runRoleList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "role list", "sigil role list MOUNT")
	cf.register(fs, env)
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		resp, err := e.ListRoles(ctx, &sigilv1.ListRolesRequest{Mount: fs.Arg(0)})
		if err != nil {
			return err
		}
		return cf.output(append([]string{}, resp.GetRoles()...), func(w io.Writer) error {
			for _, r := range resp.GetRoles() {
				fmt.Fprintln(w, r)
			}
			return nil
		})
	})
}

func runRoleDelete(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "role delete", "sigil role delete MOUNT/ROLE")
	cf.register(fs, env)
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		mount, role, err := splitRolePath(fs.Arg(0))
		if err != nil {
			return err
		}
		if _, err := e.DeleteRole(ctx, &sigilv1.DeleteRoleRequest{Mount: mount, Role: role}); err != nil {
			return err
		}
		return cf.output(map[string]any{"role": fs.Arg(0), "deleted": true}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "deleted role %s\n", fs.Arg(0))
			return err
		})
	})
}

func runCreds(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "creds", "sigil creds MOUNT/ROLE [--ttl D] [--pq | --recipient-cert SERIAL --recipient-key KEY.pem]")
	cf.register(fs, env)
	ttl := ttlFlag(fs, "ttl", 0, minTTL, maxCertTTL, "lease TTL, capped by the role's max_ttl (default: the role's)")
	pq := fs.Bool("pq", false, "seal the secret to an ML-KEM-768+X25519 hybrid key instead of X25519")
	certSerial := fs.String("recipient-cert", "", "seal to the public key of this Sigil-issued certificate (serial)")
	certKey := fs.String("recipient-key", "", "the private key (PEM, ECDSA P-256) of --recipient-cert, to open the envelope here")
	wrapTTL := ttlFlag(fs, "wrap-ttl", 0, minTTL, maxBootstrapTTL, "return a single-use wrapping token valid this long instead of the secret (sigil unwrap TOKEN)")
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		mount, role, err := splitRolePath(fs.Arg(0))
		if err != nil {
			return err
		}
		req := &sigilv1.CredsRequest{Mount: mount, Role: role, TtlSeconds: int64(ttl.Seconds())}
		if *wrapTTL > 0 {
			req.WrapTtlSeconds = int64(wrapTTL.Seconds())
			sent := time.Now()
			resp, err := e.Creds(ctx, req)
			if err != nil {
				return err
			}
			return printWrapped(&cf, map[string]any{"lease_id": resp.GetLeaseId()}, resp.GetWrapToken(), *wrapTTL, sent, resp.GetWrapExpiresAtUnix())
		}
		var open func(env *envelope.Envelope, leaseID string) (map[string]string, error)
		switch {
		case *certSerial != "":
			if *certKey == "" {
				return usagef("--recipient-cert needs --recipient-key to open the secret here")
			}
			b, err := os.ReadFile(*certKey)
			if err != nil {
				return err
			}
			block, _ := pem.Decode(b)
			if block == nil {
				return fmt.Errorf("%s: no PEM key", *certKey)
			}
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				if k, err = x509.ParseECPrivateKey(block.Bytes); err != nil {
					return fmt.Errorf("%s: %w", *certKey, err)
				}
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return fmt.Errorf("%s: recipient keys must be ECDSA P-256", *certKey)
			}
			priv, err := envelope.PrivateKeyFromECDSA(ek)
			if err != nil {
				return err
			}
			req.Recipient = &sigilv1.Recipient{CertificateSerial: *certSerial}
			open = func(en *envelope.Envelope, id string) (map[string]string, error) {
				return envelope.OpenData(priv, en, id)
			}
		default:
			kem := envelope.KEMX25519HKDFSHA256
			if *pq {
				kem = envelope.KEMMLKEM768X25519
			}
			priv, r, err := envelope.GenerateKey(kem)
			if err != nil {
				return err
			}
			req.Recipient = &sigilv1.Recipient{Kem: uint32(r.KEM), PublicKey: r.PublicKey}
			open = func(en *envelope.Envelope, id string) (map[string]string, error) {
				return envelope.OpenData(priv, en, id)
			}
		}
		sent := time.Now()
		resp, err := e.Creds(ctx, req)
		if err != nil {
			return err
		}
		return printCreds(&cf, resp, open, *ttl, sent)
	})
}

// printCreds opens a credentials envelope locally and prints the secret.
// ttl is what was asked for (0: the role's default), to warn when the
// server granted less.
func printCreds(cf *clientFlags, resp *sigilv1.CredsResponse, open func(*envelope.Envelope, string) (map[string]string, error),
	ttl time.Duration, sent time.Time) error {
	var en envelope.Envelope
	if err := en.UnmarshalBinary(resp.GetEnvelope()); err != nil {
		return fmt.Errorf("server sent a malformed envelope: %w", err)
	}
	data, err := open(&en, resp.GetLeaseId())
	if err != nil {
		return fmt.Errorf("open the secret: %w", err)
	}
	out := map[string]any{"lease_id": resp.GetLeaseId(), "lease_duration": resp.GetLeaseDurationSeconds(),
		"renewable": resp.GetRenewable(), "data": data}
	if len(resp.GetPublicData()) > 0 {
		out["public"] = resp.GetPublicData()
	}
	if ttl > 0 {
		granted := time.Duration(resp.GetLeaseDurationSeconds()) * time.Second
		out["requested_ttl_seconds"] = int64(ttl / time.Second)
		out["ttl_capped"] = granted < ttl
		if granted < ttl {
			warnCapped(cf.env.stderr, "--ttl", ttl, granted)
		}
	}
	return cf.output(out, func(w io.Writer) error {
		rows := map[string]string{"lease_id": resp.GetLeaseId(),
			"lease_duration": (time.Duration(resp.GetLeaseDurationSeconds()) * time.Second).String(),
			"renewable":      fmt.Sprint(resp.GetRenewable())}
		for k, v := range resp.GetPublicData() {
			rows[k] = v
		}
		for k, v := range data {
			rows[k] = v
		}
		return printKV(w, rows)
	})
}

// printKV prints key/value rows sorted by key, aligned with spaces. A
// multi-line value (a PEM block) starts on its own line, so it can be
// copied as it is.
func printKV(w io.Writer, rows map[string]string) error {
	keys := make([]string, 0, len(rows))
	width := 0
	for k := range rows {
		keys = append(keys, k)
		width = max(width, len(k))
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := rows[k]
		if strings.Contains(strings.TrimRight(v, "\n"), "\n") {
			if _, err := fmt.Fprintf(w, "%s:\n%s\n", k, strings.TrimRight(v, "\n")); err != nil {
				return err
			}
			continue
		}
		if _, err := fmt.Fprintf(w, "%-*s  %s\n", width, k, v); err != nil {
			return err
		}
	}
	return nil
}

func runUnwrap(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "unwrap", "sigil unwrap TOKEN  (works once)")
	cf.register(fs, env)
	pq := fs.Bool("pq", false, "seal the secret to an ML-KEM-768+X25519 hybrid key instead of X25519")
	return connCall(ctx, fs, &cf, args, 1, func(ctx context.Context, conn *grpc.ClientConn) error {
		kem := envelope.KEMX25519HKDFSHA256
		if *pq {
			kem = envelope.KEMMLKEM768X25519
		}
		priv, r, err := envelope.GenerateKey(kem)
		if err != nil {
			return err
		}
		resp, err := sigilv1.NewWrapServiceClient(conn).Unwrap(ctx, &sigilv1.UnwrapRequest{Token: fs.Arg(0),
			Recipient: &sigilv1.Recipient{Kem: uint32(r.KEM), PublicKey: r.PublicKey}})
		if err != nil {
			return err
		}
		return printCreds(&cf, resp, func(en *envelope.Envelope, id string) (map[string]string, error) {
			return envelope.OpenData(priv, en, id)
		}, 0, time.Time{})
	})
}

func leaseView(l *sigilv1.LeaseInfo) map[string]any {
	return map[string]any{"id": l.GetId(), "identity": l.GetIdentity(), "state": l.GetState(), "renewable": l.GetRenewable(),
		"issued_at": time.Unix(l.GetIssuedAtUnix(), 0).UTC(), "expires_at": time.Unix(l.GetExpiresAtUnix(), 0).UTC(),
		"max_expires_at": time.Unix(l.GetMaxExpiresAtUnix(), 0).UTC(), "attempts": l.GetAttempts(), "last_error": l.GetLastError()}
}

func printLease(cf *clientFlags, view map[string]any, l *sigilv1.LeaseInfo) error {
	return cf.output(view, func(w io.Writer) error {
		rows := map[string]string{"id": l.GetId(), "state": l.GetState(), "identity": l.GetIdentity(),
			"renewable":      fmt.Sprint(l.GetRenewable()),
			"expires_at":     time.Unix(l.GetExpiresAtUnix(), 0).UTC().Format(time.RFC3339),
			"max_expires_at": time.Unix(l.GetMaxExpiresAtUnix(), 0).UTC().Format(time.RFC3339)}
		if l.GetLastError() != "" {
			rows["attempts"] = fmt.Sprint(l.GetAttempts())
			rows["last_error"] = l.GetLastError()
		}
		return printKV(w, rows)
	})
}

func runLeaseList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "lease list", "sigil lease list [--prefix P] [--irrevocable]")
	cf.register(fs, env)
	prefix := fs.String("prefix", "", "only leases whose id starts with this")
	irrevocable := fs.Bool("irrevocable", false, "only leases Sigil gave up revoking")
	return engCall(ctx, fs, &cf, args, 0, 0, func(ctx context.Context, _ sigilv1.EngineServiceClient, l sigilv1.LeaseServiceClient) error {
		var all []*sigilv1.LeaseInfo
		page := ""
		for {
			resp, err := l.List(ctx, &sigilv1.ListLeasesRequest{Prefix: *prefix, Irrevocable: *irrevocable, PageToken: page, PageSize: 500})
			if err != nil {
				return err
			}
			all = append(all, resp.GetLeases()...)
			if page = resp.GetNextPageToken(); page == "" {
				break
			}
		}
		rows := []map[string]any{}
		for _, x := range all {
			rows = append(rows, leaseView(x))
		}
		return cf.output(rows, func(w io.Writer) error {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LEASE\tSTATE\tEXPIRES")
			for _, x := range all {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", x.GetId(), x.GetState(), time.Unix(x.GetExpiresAtUnix(), 0).UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		})
	})
}

func runLeaseLookup(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "lease lookup", "sigil lease lookup ID")
	cf.register(fs, env)
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, _ sigilv1.EngineServiceClient, l sigilv1.LeaseServiceClient) error {
		resp, err := l.Lookup(ctx, &sigilv1.LookupLeaseRequest{Id: fs.Arg(0)})
		if err != nil {
			return err
		}
		return printLease(&cf, leaseView(resp), resp)
	})
}

func runLeaseRenew(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "lease renew", "sigil lease renew [--increment D] ID")
	cf.register(fs, env)
	inc := ttlFlag(fs, "increment", 0, minTTL, maxCertTTL, "requested extension (default: the role's TTL); never past the max TTL")
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, _ sigilv1.EngineServiceClient, l sigilv1.LeaseServiceClient) error {
		sent := time.Now()
		resp, err := l.Renew(ctx, &sigilv1.RenewLeaseRequest{Id: fs.Arg(0), IncrementSeconds: int64(inc.Seconds())})
		if err != nil {
			return err
		}
		view := leaseView(resp)
		ttlReport(env.stderr, view, "--increment", *inc, sent, resp.GetExpiresAtUnix())
		return printLease(&cf, view, resp)
	})
}

func runLeaseRevoke(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "lease revoke", "sigil lease revoke ID | --prefix P | --force ID")
	cf.register(fs, env)
	prefix := fs.String("prefix", "", "revoke every lease whose id starts with this")
	force := fs.Bool("force", false, "forget the lease even if the backend cannot revoke it (recorded as forced)")
	return engCall(ctx, fs, &cf, args, 0, 1, func(ctx context.Context, _ sigilv1.EngineServiceClient, l sigilv1.LeaseServiceClient) error {
		if (*prefix == "") == (fs.NArg() == 0) {
			return usagef("give either a lease ID or --prefix")
		}
		resp, err := l.Revoke(ctx, &sigilv1.RevokeLeaseRequest{Id: fs.Arg(0), Prefix: *prefix, Force: *force})
		if err != nil {
			return err
		}
		return cf.output(map[string]any{"revoked": resp.GetRevoked()}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "revoked %d lease(s)\n", resp.GetRevoked())
			return err
		})
	})
}
