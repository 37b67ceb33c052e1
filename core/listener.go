package core

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

// listenerKeyName is the custody key of the server's own TLS certificate:
// the listeners' private key lives in custody like every other key.
const listenerKeyName = "listener-tls"

// listenerCertTTL is the lifetime asked for the listeners' certificate; it
// is renewed in place after two thirds of it.
const listenerCertTTL = 30 * 24 * time.Hour

// ListenerCert keeps a certificate for the server's listeners, issued by
// Sigil's own intermediate for the listeners' names, and renews it before
// it expires (Run).
type ListenerCert struct {
	custody hsm.Custody
	ca      *ca.Authority
	names   []string
	log     *slog.Logger
	cur     atomic.Pointer[tls.Certificate]
}

// ListenerNames are the names the listeners' certificate carries for a
// listener bound to addr: localhost, 127.0.0.1 and addr's host when it is
// a specific one.
func ListenerNames(addr string) []string {
	host, _, _ := net.SplitHostPort(addr)
	names := []string{"localhost", "127.0.0.1"}
	if host != "" && host != "localhost" && host != "127.0.0.1" && host != "0.0.0.0" && host != "::" {
		names = append(names, host)
	}
	return names
}

// NewListenerCert issues the listeners' first certificate for names, which
// needs the CA unsealed and initialised.
func (c *Core) NewListenerCert(ctx context.Context, names []string) (*ListenerCert, error) {
	u := c.Current()
	if u == nil || u.CA.Root() == nil {
		return nil, errors.New("sigil is sealed or has no CA")
	}
	m := &ListenerCert{custody: u.Custody, ca: u.CA, names: names, log: c.log}
	if _, err := m.custody.Key(ctx, listenerKeyName); errors.Is(err, hsm.ErrKeyNotFound) {
		if _, err := m.custody.CreateKey(ctx, listenerKeyName, hsm.ECDSAP256); err != nil {
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

func (m *ListenerCert) renew(ctx context.Context) error {
	signer, err := m.custody.Signer(ctx, listenerKeyName)
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
	issued, err := m.ca.Sign(ctx, ca.SignRequest{CSR: csr, Profile: "server", TTL: listenerCertTTL, Requester: "sigil-server"})
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

// Run renews the certificate after two thirds of its lifetime until ctx
// ends.
func (m *ListenerCert) Run(ctx context.Context) {
	for {
		leaf := m.Leaf()
		wait := max(time.Until(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore)*2/3)), time.Minute)
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

// Leaf is the current certificate.
func (m *ListenerCert) Leaf() *x509.Certificate { return m.cur.Load().Leaf }

// Certificate is the current certificate with its key, for
// tls.Config.GetCertificate.
func (m *ListenerCert) Certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return m.cur.Load(), nil
}
