package e2e

// CRLs in a cluster (issue 18): two `sigil server` nodes on one PostgreSQL
// serve the same stored CRL of a shard. A revocation through one node is
// in the CRL the other serves at once, and CRL numbers never go backwards
// when a client alternates between the nodes.

import (
	"crypto/x509"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"testing"

	"github.com/sigil-ca/sigil/internal/testharness"
)

// crlHAFetch fetches and parses the CRL at path from a node's HTTPS
// listener, checking its signature against the issuer.
func crlHAFetch(t *testing.T, client *http.Client, d *devServer, path string, issuer *x509.Certificate) *x509.RevocationList {
	t.Helper()
	resp, err := client.Get("https://" + d.httpsAddr + path)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", path, d.httpsAddr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s from %s: %d %s %v", path, d.httpsAddr, resp.StatusCode, body, err)
	}
	crl, err := x509.ParseRevocationList(body)
	if err != nil {
		t.Fatalf("CRL from %s: %v", d.httpsAddr, err)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		t.Fatalf("CRL from %s: signature: %v", d.httpsAddr, err)
	}
	return crl
}

func crlHALists(crl *x509.RevocationList, serial *big.Int) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return true
		}
	}
	return false
}

// crlHASign signs a certificate through node d and returns it and its
// issuer.
func crlHASign(t *testing.T, c *haCluster, d *devServer, csr string) (*x509.Certificate, *x509.Certificate) {
	t.Helper()
	out, stderr, code := c.cliOn(d, "ca", "sign", "--csr", csr, "--ttl", "1h")
	if code != 0 {
		t.Fatalf("ca sign on %s: %s", d.grpcAddr, stderr)
	}
	certs, err := haPEMCerts(out)
	if err != nil || len(certs) < 2 {
		t.Fatalf("ca sign output %q: %v", out, err)
	}
	return certs[0], certs[1]
}

// TestCRLHARevocationSeenByPeer: revoke through node A; node B's CRL lists
// the serial on the first fetch after the revocation returned (the bound
// is the regeneration, no cache interval), and CRL numbers fetched
// alternately from A and B, with revocations through either between
// fetches, never decrease.
func TestCRLHARevocationSeenByPeer(t *testing.T) {
	c := haStartCluster(t, testharness.StartPostgres(t), 2)
	a, b := c.nodes[0], c.nodes[1]
	client := a.httpClient(t)

	// All certificates of one test name land on some shard; sign until two
	// share one, so the alternation below exercises a single CRL scope.
	csr := writeCSR(t, c.dir, "crlha.example.test")
	var victims []*x509.Certificate
	var issuer *x509.Certificate
	var path string
	shardOf := map[string][]*x509.Certificate{}
	for i := 0; i < 40 && len(victims) < 3; i++ {
		cert, iss := crlHASign(t, c, c.nodes[i%2], csr)
		issuer = iss
		if len(cert.CRLDistributionPoints) != 1 {
			t.Fatalf("certificate CRL distribution points %v", cert.CRLDistributionPoints)
		}
		u, err := url.Parse(cert.CRLDistributionPoints[0])
		if err != nil {
			t.Fatal(err)
		}
		shardOf[u.Path] = append(shardOf[u.Path], cert)
		if len(shardOf[u.Path]) > len(victims) {
			path, victims = u.Path, shardOf[u.Path]
		}
	}
	if len(victims) < 3 {
		t.Fatalf("no shard got three of 40 certificates: %v", shardOf)
	}

	// Both nodes have served (and so held) the shard's CRL before the
	// revocation.
	for _, d := range []*devServer{a, b} {
		if crl := crlHAFetch(t, client, d, path, issuer); len(crl.RevokedCertificateEntries) != 0 {
			t.Fatalf("fresh shard CRL lists %d entries", len(crl.RevokedCertificateEntries))
		}
	}

	if _, stderr, code := c.cliOn(a, "ca", "revoke", victims[0].SerialNumber.Text(16), "--reason", "keyCompromise"); code != 0 {
		t.Fatalf("revoke on A: %s", stderr)
	}
	crlB := crlHAFetch(t, client, b, path, issuer)
	if !crlHALists(crlB, victims[0].SerialNumber) {
		t.Fatalf("node B serves CRL number %v without the serial revoked on node A", crlB.Number)
	}

	// Alternate fetches; revoke the other victims through alternating
	// nodes on the way. Numbers never decrease, and every CRL lists every
	// serial revoked before it was fetched.
	last := crlB.Number
	revoked := []*x509.Certificate{victims[0]}
	for i := range 12 {
		if i == 3 || i == 8 {
			v := victims[len(revoked)]
			if _, stderr, code := c.cliOn(c.nodes[i%2], "ca", "revoke", v.SerialNumber.Text(16)); code != 0 {
				t.Fatalf("revoke: %s", stderr)
			}
			revoked = append(revoked, v)
		}
		d := c.nodes[(i+1)%2]
		crl := crlHAFetch(t, client, d, path, issuer)
		if crl.Number.Cmp(last) < 0 {
			t.Fatalf("fetch %d from %s: CRL number %v after %v: went backwards", i, d.httpsAddr, crl.Number, last)
		}
		for _, v := range revoked {
			if !crlHALists(crl, v.SerialNumber) {
				t.Fatalf("fetch %d from %s: CRL number %v misses revoked serial %x", i, d.httpsAddr, crl.Number, v.SerialNumber)
			}
		}
		last = crl.Number
	}
	if last.Cmp(crlB.Number) <= 0 {
		t.Fatalf("CRL number stayed %v through two more revocations", last)
	}
	t.Logf("final CRL number %v on %s", last, path)
}
