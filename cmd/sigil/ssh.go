package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/sigil-ca/sigil/engines/keys"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// certPath is where ssh looks for the certificate of a key: id_x.pub →
// id_x-cert.pub.
func certPath(pubPath string) string {
	return strings.TrimSuffix(pubPath, ".pub") + "-cert.pub"
}

func runSSHSign(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "ssh sign", "sigil ssh sign MOUNT/ROLE --public-key FILE [--principals a,b] [--ttl D] [--out FILE]")
	cf.register(fs, env)
	pubPath := fs.String("public-key", "", "the SSH public key to certify (authorized_keys form)")
	principals := fs.String("principals", "", "comma-separated principals (default: the role's default_principals)")
	ttl := ttlFlag(fs, "ttl", 0, minTTL, maxCertTTL, "validity, capped by the role's max_ttl (default: the role's ttl)")
	out := fs.String("out", "", "where to write the certificate (default: the key's -cert.pub sibling)")
	return call(ctx, fs, &cf, args, 1, 1, 30*time.Second, func(ctx context.Context, conn *grpc.ClientConn) error {
		mount, role, err := splitMountKey(fs.Arg(0))
		if err != nil {
			return usagef("%q: want MOUNT/ROLE", fs.Arg(0))
		}
		if *pubPath == "" {
			return usagef("--public-key is required")
		}
		f, err := os.Open(*pubPath)
		if err != nil {
			return err
		}
		pub, err := io.ReadAll(io.LimitReader(f, keys.MaxPublicKey+1))
		f.Close()
		if err != nil {
			return err
		}
		if len(pub) > keys.MaxPublicKey {
			return fmt.Errorf("%s: larger than %d bytes; not an SSH public key", *pubPath, keys.MaxPublicKey)
		}
		var ps []string
		for p := range strings.SplitSeq(*principals, ",") {
			if p = strings.TrimSpace(p); p != "" {
				ps = append(ps, p)
			}
		}
		sent := time.Now()
		resp, err := sigilv1.NewSSHServiceClient(conn).Sign(ctx, &sigilv1.SSHSignRequest{Mount: mount, Role: role, PublicKey: pub,
			Principals: ps, TtlSeconds: int64(ttl.Seconds())})
		if err != nil {
			return err
		}
		dest := *out
		if dest == "" {
			dest = certPath(*pubPath)
		}
		if err := os.WriteFile(dest, []byte(resp.GetCertificate()), 0o644); err != nil {
			return err
		}
		valid := time.Unix(resp.GetValidBeforeUnix(), 0).UTC()
		view := map[string]any{"certificate_file": dest, "serial": resp.GetSerial(), "key_id": resp.GetKeyId(),
			"principals": resp.GetPrincipals(), "valid_before": valid}
		ttlReport(env.stderr, view, "--ttl", *ttl, sent, resp.GetValidBeforeUnix())
		return cf.output(view, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "wrote %s\nserial        %d\nkey_id        %s\nprincipals    %s\nvalid_before  %s\n",
				dest, resp.GetSerial(), resp.GetKeyId(), strings.Join(resp.GetPrincipals(), ","), valid.Format(time.RFC3339))
			return err
		})
	})
}
