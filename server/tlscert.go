package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/hsm"
)

// tlsKeyName is the custody key of the server's own TLS certificate: the
// listeners' private key lives in custody like every other key.
const tlsKeyName = "listener-tls"

// serverCertTTL is the lifetime asked for the listeners' certificate; it is
// renewed in place after two thirds of it.
const serverCertTTL = 30 * 24 * time.Hour

// certIssuer is what the TLS manager needs from the CA.
type certIssuer interface {
	Sign(ctx context.Context, req ca.SignRequest) (*ca.Issued, error)
}

// tlsManager keeps a certificate for the listeners, issued by Sigil's own
// intermediate for the listeners' names, and renews it before it expires.
type tlsManager struct {
	custody hsm.Custody
	ca      certIssuer
	names   []string
	log     *slog.Logger
	cur     atomic.Pointer[tls.Certificate]
}

func newTLSManager(ctx context.Context, custody hsm.Custody, issuer certIssuer, names []string, log *slog.Logger) (*tlsManager, error) {
	m := &tlsManager{custody: custody, ca: issuer, names: names, log: log}
	if _, err := custody.Key(ctx, tlsKeyName); errors.Is(err, hsm.ErrKeyNotFound) {
		if _, err := custody.CreateKey(ctx, tlsKeyName, hsm.ECDSAP256); err != nil {
			return nil, fmt.Errorf("create TLS key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("TLS key: %w", err)
	}
	if err := m.renew(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *tlsManager) renew(ctx context.Context) error {
	signer, err := m.custody.Signer(ctx, tlsKeyName)
	if err != nil {
		return fmt.Errorf("TLS key signer: %w", err)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: m.names[0]}}
	for _, n := range m.names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
	if err != nil {
		return fmt.Errorf("TLS CSR: %w", err)
	}
	issued, err := m.ca.Sign(ctx, ca.SignRequest{CSR: csr, Profile: "server", TTL: serverCertTTL, Requester: "sigil-server"})
	if err != nil {
		return fmt.Errorf("issue TLS certificate: %w", err)
	}
	chain := [][]byte{issued.Certificate.Raw}
	for _, c := range issued.Chain {
		// The root is the trust anchor: clients already hold it.
		if !c.IsCA || string(c.RawIssuer) != string(c.RawSubject) {
			chain = append(chain, c.Raw)
		}
	}
	m.cur.Store(&tls.Certificate{Certificate: chain, PrivateKey: signer, Leaf: issued.Certificate})
	m.log.Info("TLS certificate issued", "serial", issued.Certificate.SerialNumber.Text(16), "not_after", issued.Certificate.NotAfter, "names", m.names)
	return nil
}

// run renews the certificate after two thirds of its lifetime until ctx ends.
func (m *tlsManager) run(ctx context.Context) {
	for {
		leaf := m.cur.Load().Leaf
		life := leaf.NotAfter.Sub(leaf.NotBefore)
		wait := time.Until(leaf.NotBefore.Add(life * 2 / 3))
		if wait < time.Minute {
			wait = time.Minute
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := m.renew(ctx); err != nil {
			m.log.Error("renew TLS certificate; retrying in a minute", "err", err)
		}
	}
}

func (m *tlsManager) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return m.cur.Load(), nil
		},
	}
}
