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
	cf.register(fs, env, false)
	mount := fs.String("mount", "", "mount path (default: the type)")
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		m := *mount
		if m == "" {
			m = fs.Arg(0)
		}
		if _, err := e.Enable(ctx, &sigilv1.EnableEngineRequest{Type: fs.Arg(0), Mount: m}); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "enabled %s at %s\n", fs.Arg(0), m)
		return nil
	})
}

func runEngineList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "engine list", "sigil engine list")
	cf.register(fs, env, true)
	return engCall(ctx, fs, &cf, args, 0, 0, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		resp, err := e.List(ctx, &sigilv1.ListEnginesRequest{})
		if err != nil {
			return err
		}
		if cf.format == "json" {
			type row struct {
				Mount        string `json:"mount"`
				Type         string `json:"type"`
				ActiveLeases int64  `json:"active_leases"`
			}
			rows := []row{}
			for _, m := range resp.GetEngines() {
				rows = append(rows, row{m.GetMount(), m.GetType(), m.GetActiveLeases()})
			}
			return printJSON(env.stdout, rows)
		}
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MOUNT\tTYPE\tACTIVE LEASES")
		for _, m := range resp.GetEngines() {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", m.GetMount(), m.GetType(), m.GetActiveLeases())
		}
		return tw.Flush()
	})
}

func runEngineDisable(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "engine disable", "sigil engine disable [--revoke-leases] PATH")
	cf.register(fs, env, false)
	revoke := fs.Bool("revoke-leases", false, "revoke the mount's active leases first")
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		if _, err := e.Disable(ctx, &sigilv1.DisableEngineRequest{Mount: fs.Arg(0), RevokeLeases: *revoke}); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "disabled %s\n", fs.Arg(0))
		return nil
	})
}

func runEngineConfigure(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "engine configure", "sigil engine configure PATH key=value...  (value @file reads a file)")
	cf.register(fs, env, false)
	return engCall(ctx, fs, &cf, args, 2, -1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		kv, err := parseKV(fs.Args()[1:])
		if err != nil {
			return err
		}
		if _, err := e.Configure(ctx, &sigilv1.ConfigureEngineRequest{Mount: fs.Arg(0), Config: kv}); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "configured %s\n", fs.Arg(0))
		return nil
	})
}

func runEngineRotateRoot(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "engine rotate-root", "sigil engine rotate-root PATH")
	cf.register(fs, env, false)
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		if _, err := e.RotateRoot(ctx, &sigilv1.RotateRootRequest{Mount: fs.Arg(0)}); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "rotated the root credential of %s\n", fs.Arg(0))
		return nil
	})
}

func runRoleWrite(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "role write", "sigil role write MOUNT/ROLE key=value...  (value @file reads a file)")
	cf.register(fs, env, false)
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
		fmt.Fprintf(env.stdout, "wrote role %s\n", fs.Arg(0))
		return nil
	})
}

func runRoleRead(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "role read", "sigil role read MOUNT/ROLE")
	cf.register(fs, env, true)
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		mount, role, err := splitRolePath(fs.Arg(0))
		if err != nil {
			return err
		}
		resp, err := e.ReadRole(ctx, &sigilv1.ReadRoleRequest{Mount: mount, Role: role})
		if err != nil {
			return err
		}
		if cf.format == "json" {
			return printJSON(env.stdout, resp.GetFields())
		}
		keys := make([]string, 0, len(resp.GetFields()))
		for k := range resp.GetFields() {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\n", k, resp.GetFields()[k])
		}
		return tw.Flush()
	})
}

func runRoleList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "role list", "sigil role list MOUNT")
	cf.register(fs, env, true)
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		resp, err := e.ListRoles(ctx, &sigilv1.ListRolesRequest{Mount: fs.Arg(0)})
		if err != nil {
			return err
		}
		if cf.format == "json" {
			return printJSON(env.stdout, append([]string{}, resp.GetRoles()...))
		}
		for _, r := range resp.GetRoles() {
			fmt.Fprintln(env.stdout, r)
		}
		return nil
	})
}

func runRoleDelete(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "role delete", "sigil role delete MOUNT/ROLE")
	cf.register(fs, env, false)
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		mount, role, err := splitRolePath(fs.Arg(0))
		if err != nil {
			return err
		}
		if _, err := e.DeleteRole(ctx, &sigilv1.DeleteRoleRequest{Mount: mount, Role: role}); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "deleted role %s\n", fs.Arg(0))
		return nil
	})
}

func runCreds(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "creds", "sigil creds MOUNT/ROLE [--ttl D] [--pq | --recipient-cert SERIAL --recipient-key KEY.pem]")
	cf.register(fs, env, true)
	ttl := fs.Duration("ttl", 0, "lease TTL (default: the role's)")
	pq := fs.Bool("pq", false, "seal the secret to an ML-KEM-768+X25519 hybrid key instead of X25519")
	certSerial := fs.String("recipient-cert", "", "seal to the public key of this Sigil-issued certificate (serial)")
	certKey := fs.String("recipient-key", "", "the private key (PEM, ECDSA P-256) of --recipient-cert, to open the envelope here")
	wrapTTL := fs.Duration("wrap-ttl", 0, "return a single-use wrapping token valid this long instead of the secret (sigil unwrap TOKEN)")
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, e sigilv1.EngineServiceClient, _ sigilv1.LeaseServiceClient) error {
		mount, role, err := splitRolePath(fs.Arg(0))
		if err != nil {
			return err
		}
		ttlSecs, err := ttlSeconds("ttl", *ttl)
		if err != nil {
			return err
		}
		wrapSecs, err := wrapTTLSeconds(*wrapTTL)
		if err != nil {
			return err
		}
		req := &sigilv1.CredsRequest{Mount: mount, Role: role, TtlSeconds: ttlSecs}
		if wrapSecs > 0 {
			req.WrapTtlSeconds = wrapSecs
			resp, err := e.Creds(ctx, req)
			if err != nil {
				return err
			}
			if cf.format == "json" {
				return printJSON(env.stdout, map[string]any{"lease_id": resp.GetLeaseId(), "wrap_token": resp.GetWrapToken(),
					"wrap_expires_at": time.Unix(resp.GetWrapExpiresAtUnix(), 0).UTC()})
			}
			fmt.Fprintf(env.stdout, "wrap_token\t%s\nexpires\t%s\n", resp.GetWrapToken(), time.Unix(resp.GetWrapExpiresAtUnix(), 0).UTC().Format(time.RFC3339))
			return nil
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
		resp, err := e.Creds(ctx, req)
		if err != nil {
			return err
		}
		return printCreds(env, cf.format, resp, open)
	})
}

// printCreds opens a credentials envelope locally and prints the secret.
func printCreds(env *cliEnv, format string, resp *sigilv1.CredsResponse, open func(*envelope.Envelope, string) (map[string]string, error)) error {
	var en envelope.Envelope
	if err := en.UnmarshalBinary(resp.GetEnvelope()); err != nil {
		return fmt.Errorf("server sent a malformed envelope: %w", err)
	}
	data, err := open(&en, resp.GetLeaseId())
	if err != nil {
		return fmt.Errorf("open the secret: %w", err)
	}
	if format == "json" {
		out := map[string]any{"lease_id": resp.GetLeaseId(), "lease_duration": resp.GetLeaseDurationSeconds(),
			"renewable": resp.GetRenewable(), "data": data}
		if len(resp.GetPublicData()) > 0 {
			out["public"] = resp.GetPublicData()
		}
		return printJSON(env.stdout, out)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "lease_id\t%s\nlease_duration\t%s\nrenewable\t%t\n", resp.GetLeaseId(),
		time.Duration(resp.GetLeaseDurationSeconds())*time.Second, resp.GetRenewable())
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\n", k, data[k])
	}
	for k, v := range resp.GetPublicData() {
		if _, dup := data[k]; !dup {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	return tw.Flush()
}

func runUnwrap(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "unwrap", "sigil unwrap TOKEN  (works once)")
	cf.register(fs, env, true)
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
		return printCreds(env, cf.format, resp, func(en *envelope.Envelope, id string) (map[string]string, error) {
			return envelope.OpenData(priv, en, id)
		})
	})
}

func leaseView(l *sigilv1.LeaseInfo) map[string]any {
	return map[string]any{"id": l.GetId(), "identity": l.GetIdentity(), "state": l.GetState(), "renewable": l.GetRenewable(),
		"issued_at": time.Unix(l.GetIssuedAtUnix(), 0).UTC(), "expires_at": time.Unix(l.GetExpiresAtUnix(), 0).UTC(),
		"max_expires_at": time.Unix(l.GetMaxExpiresAtUnix(), 0).UTC(), "attempts": l.GetAttempts(), "last_error": l.GetLastError()}
}

func printLease(env *cliEnv, format string, l *sigilv1.LeaseInfo) error {
	if format == "json" {
		return printJSON(env.stdout, leaseView(l))
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%s\nstate\t%s\nidentity\t%s\nrenewable\t%t\nexpires_at\t%s\nmax_expires_at\t%s\n", l.GetId(), l.GetState(),
		l.GetIdentity(), l.GetRenewable(), time.Unix(l.GetExpiresAtUnix(), 0).UTC().Format(time.RFC3339),
		time.Unix(l.GetMaxExpiresAtUnix(), 0).UTC().Format(time.RFC3339))
	if l.GetLastError() != "" {
		fmt.Fprintf(tw, "attempts\t%d\nlast_error\t%s\n", l.GetAttempts(), l.GetLastError())
	}
	return tw.Flush()
}

func runLeaseList(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "lease list", "sigil lease list [--prefix P] [--irrevocable]")
	cf.register(fs, env, true)
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
		if cf.format == "json" {
			rows := []map[string]any{}
			for _, x := range all {
				rows = append(rows, leaseView(x))
			}
			return printJSON(env.stdout, rows)
		}
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "LEASE\tSTATE\tEXPIRES")
		for _, x := range all {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", x.GetId(), x.GetState(), time.Unix(x.GetExpiresAtUnix(), 0).UTC().Format(time.RFC3339))
		}
		return tw.Flush()
	})
}

func runLeaseLookup(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "lease lookup", "sigil lease lookup ID")
	cf.register(fs, env, true)
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, _ sigilv1.EngineServiceClient, l sigilv1.LeaseServiceClient) error {
		resp, err := l.Lookup(ctx, &sigilv1.LookupLeaseRequest{Id: fs.Arg(0)})
		if err != nil {
			return err
		}
		return printLease(env, cf.format, resp)
	})
}

func runLeaseRenew(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "lease renew", "sigil lease renew [--increment D] ID")
	cf.register(fs, env, true)
	inc := fs.Duration("increment", 0, "requested extension (default: the role's TTL); never past the max TTL")
	return engCall(ctx, fs, &cf, args, 1, 1, func(ctx context.Context, _ sigilv1.EngineServiceClient, l sigilv1.LeaseServiceClient) error {
		resp, err := l.Renew(ctx, &sigilv1.RenewLeaseRequest{Id: fs.Arg(0), IncrementSeconds: int64(inc.Seconds())})
		if err != nil {
			return err
		}
		return printLease(env, cf.format, resp)
	})
}

func runLeaseRevoke(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "lease revoke", "sigil lease revoke ID | --prefix P | --force ID")
	cf.register(fs, env, true)
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
		if cf.format == "json" {
			return printJSON(env.stdout, map[string]any{"revoked": resp.GetRevoked()})
		}
		fmt.Fprintf(env.stdout, "revoked %d lease(s)\n", resp.GetRevoked())
		return nil
	})
}
