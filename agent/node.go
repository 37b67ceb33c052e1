package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// nodeFile holds the node SVID in the data directory: the certificate, its
// chain and the key (made here and never sent), in one 0600 file so that
// a renewal replaces them together with one rename.
const nodeFile = "node.pem"

// nodeIdentity is the agent's own SVID, swapped atomically on renewal; the
// TLS client presents whatever is current.
type nodeIdentity struct {
	dir string
	mu  sync.RWMutex
	// cert is nil until enrolment.
	cert *tls.Certificate
	id   spiffeid.ID
	// due is when cert is renewed, fixed (jitter included) when it is set.
	due time.Time
}

// renewDue is when the current node SVID should be renewed.
func (n *nodeIdentity) renewDue() time.Time {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.due
}

func (n *nodeIdentity) current() (*tls.Certificate, spiffeid.ID) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.cert, n.id
}

// clientCertificate is tls.Config.GetClientCertificate: the current node
// SVID, or none before enrolment (Enroll is authenticated by its token).
func (n *nodeIdentity) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	c, _ := n.current()
	if c == nil {
		return &tls.Certificate{}, nil
	}
	return c, nil
}

// load reads a node SVID kept from an earlier run; ok is false when there
// is none.
func (n *nodeIdentity) load() (bool, error) {
	path := filepath.Join(n.dir, nodeFile)
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("agent: node SVID: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return false, fmt.Errorf("agent: %s has mode %v: it holds the node key and must be 0600", path, fi.Mode().Perm())
	}
	c, err := tls.LoadX509KeyPair(path, path)
	if err != nil {
		return false, fmt.Errorf("agent: load node SVID from %s: %w", n.dir, err)
	}
	return true, n.set(&c)
}

func (n *nodeIdentity) set(c *tls.Certificate) error {
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return fmt.Errorf("agent: node SVID: %w", err)
	}
	if len(leaf.URIs) != 1 {
		return fmt.Errorf("agent: node SVID carries %d URIs, not one SPIFFE ID", len(leaf.URIs))
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return fmt.Errorf("agent: node SVID: %w", err)
	}
	c.Leaf = leaf
	n.mu.Lock()
	n.cert, n.id, n.due = c, id, renewAt(leaf.NotBefore, leaf.NotAfter)
	n.mu.Unlock()
	return nil
}

// newCSR makes a P-256 key here and a CSR naming only id.
func newCSR(id string) (*ecdsa.PrivateKey, []byte, error) {
	u, err := url.Parse(id)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: SPIFFE ID %q: %w", id, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: CSR: %w", err)
	}
	return key, csr, nil
}

// store writes the key (0600) and certificate atomically (temp file, then
// rename), then makes them current.
func (n *nodeIdentity) store(key *ecdsa.PrivateKey, certPEM string) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("agent: encode node key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	c, err := tls.X509KeyPair([]byte(certPEM), keyPEM)
	if err != nil {
		return fmt.Errorf("agent: node SVID does not match its key: %w", err)
	}
	if err := writeAtomic(filepath.Join(n.dir, nodeFile), append([]byte(certPEM), keyPEM...), 0o600); err != nil {
		return err
	}
	return n.set(&c)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("agent: write %s: %w", path, err)
	}
	return nil
}

// enroll spends the join token for the node SVID.
func (n *nodeIdentity) enroll(ctx context.Context, c sigilv1.IdentityServiceClient, token, id string) error {
	key, csr, err := newCSR(id)
	if err != nil {
		return err
	}
	resp, err := c.Enroll(ctx, &sigilv1.EnrollRequest{JoinToken: token, Csr: csr})
	if err != nil {
		return fmt.Errorf("agent: enroll %s with the join token: %w", id, err)
	}
	return n.store(key, resp.GetCertificatePem()+resp.GetChainPem())
}

// renew replaces the node SVID with one issued for a new key, authenticated
// by the current SVID (a workload renewing its own identity).
func (n *nodeIdentity) renew(ctx context.Context, c sigilv1.CAServiceClient) error {
	_, id := n.current()
	key, csr, err := newCSR(id.String())
	if err != nil {
		return err
	}
	resp, err := c.Sign(ctx, &sigilv1.SignRequest{Csr: csr, Profile: "workload"})
	if err != nil {
		return fmt.Errorf("agent: renew node SVID %s: %w", id, err)
	}
	return n.store(key, resp.GetCertificatePem()+resp.GetChainPem())
}

// renewAt is when a certificate valid from start to notAfter is renewed:
// at half its remaining lifetime, minus up to a tenth of it at random, so
// agents that started together do not renew together.
func renewAt(start, notAfter time.Time) time.Time {
	life := notAfter.Sub(start)
	if life <= 0 {
		return start
	}
	half := life / 2
	jitter := time.Duration(0)
	if span := int64(life / 10); span > 0 {
		if r, err := rand.Int(rand.Reader, big.NewInt(span)); err == nil {
			jitter = time.Duration(r.Int64())
		}
	}
	return start.Add(half - jitter)
}
