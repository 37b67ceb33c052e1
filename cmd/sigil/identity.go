package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/url"
	"time"

	"google.golang.org/grpc"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

func runJoinTokenCreate(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "identity join-token create", "sigil identity join-token create --spiffe-id ID [--ttl 10m]")
	cf.register(fs, env)
	id := fs.String("spiffe-id", "", "the one SPIFFE ID the token enrolls")
	ttl := ttlFlag(fs, "ttl", 10*time.Minute, minTTL, maxBootstrapTTL, "how long the token may be used (once)")
	return connCall(ctx, fs, &cf, args, 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		if *id == "" {
			return usagef("--spiffe-id is required")
		}
		k, err := newOneCallKey()
		if err != nil {
			return err
		}
		sent := time.Now()
		resp, err := sigilv1.NewIdentityServiceClient(conn).CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{SpiffeId: *id,
			TtlSeconds: int64(ttl.Seconds()), Recipient: k.Recipient})
		if err != nil {
			return err
		}
		data, err := k.open(resp.GetEnvelope(), "join:"+*id, "join token")
		if err != nil {
			return err
		}
		view := map[string]any{"token": data["token"], "spiffe_id": *id, "expires_at": time.Unix(resp.GetExpiresAtUnix(), 0).UTC()}
		ttlReport(env.stderr, view, "--ttl", *ttl, sent, resp.GetExpiresAtUnix())
		return cf.output(view, func(w io.Writer) error {
			_, err := fmt.Fprintln(w, data["token"])
			return err
		})
	})
}

// newWorkloadCSR makes a P-256 key here (it never leaves this machine) and
// a CSR carrying only the SPIFFE ID.
func newWorkloadCSR(spiffeID string) (*ecdsa.PrivateKey, []byte, error) {
	u, err := url.Parse(spiffeID)
	if err != nil || u.Scheme != "spiffe" {
		return nil, nil, usagef("--spiffe-id %q: must be spiffe://TRUST-DOMAIN/PATH", spiffeID)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	return key, csr, err
}

func writeKeyAndCert(keyOut, certOut string, key *ecdsa.PrivateKey, certPEM string) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeNew(keyOut, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	return writeNew(certOut, []byte(certPEM), 0o644)
}

func runEnroll(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "identity enroll", "sigil identity enroll --join-token T --spiffe-id ID --key-out F --cert-out F")
	cf.register(fs, env)
	tok := env.getenv("SIGIL_JOIN_TOKEN")
	fs.Var(secretValue{&tok}, "join-token", "one-time join token ("+envState(env, "SIGIL_JOIN_TOKEN")+")")
	spiffeID := fs.String("spiffe-id", "", "the SPIFFE ID the token was made for")
	keyOut := fs.String("key-out", "", "where to write the new private key (mode 0600)")
	certOut := fs.String("cert-out", "", "where to write the SVID and its chain")
	return connCall(ctx, fs, &cf, args, 0, func(ctx context.Context, conn *grpc.ClientConn) error {
		if tok == "" || *spiffeID == "" || *keyOut == "" || *certOut == "" {
			return usagef("--join-token, --spiffe-id, --key-out and --cert-out are required")
		}
		key, csr, err := newWorkloadCSR(*spiffeID)
		if err != nil {
			return err
		}
		resp, err := sigilv1.NewIdentityServiceClient(conn).Enroll(ctx, &sigilv1.EnrollRequest{JoinToken: tok, Csr: csr})
		if err != nil {
			return err
		}
		if err := writeKeyAndCert(*keyOut, *certOut, key, resp.GetCertificatePem()+resp.GetChainPem()); err != nil {
			return err
		}
		notAfter := time.Unix(resp.GetNotAfterUnix(), 0).UTC()
		return cf.output(map[string]any{"spiffe_id": *spiffeID, "serial": resp.GetSerial(), "not_after": notAfter,
			"key_file": *keyOut, "cert_file": *certOut}, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "enrolled %s, serial %s, expires %s\n", *spiffeID, resp.GetSerial(), notAfter.Format(time.RFC3339))
			return err
		})
	})
}
