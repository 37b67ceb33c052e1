package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Ceiling is an in-process limit measured on the same machine in the same
// run as the scenario compared with it.
type Ceiling struct {
	Name       string        `json:"name"`
	Goroutines int           `json:"goroutines"`
	Rate       float64       `json:"rate_per_s"`
	PerOp      time.Duration `json:"per_op_ns"` // wall time per operation per goroutine
	Ops        int64         `json:"ops"`
}

// measureLoop runs op from n goroutines for d and returns the rate.
func measureLoop(ctx context.Context, name string, n int, d time.Duration, op func(worker int, i int64) error) (Ceiling, error) {
	n = max(n, 1)
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var ops atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int64(0); ctx.Err() == nil; i++ {
				if err := op(w, i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return Ceiling{}, fmt.Errorf("ceiling %s: %w", name, firstErr)
	}
	c := Ceiling{Name: name, Goroutines: n, Ops: ops.Load(), Rate: Rate(int(ops.Load()), elapsed)}
	if c.Ops > 0 {
		c.PerOp = time.Duration(float64(elapsed) * float64(n) / float64(c.Ops))
	}
	return c, nil
}

// SignCeiling is the standard library's floor for issuance: per operation
// one CSR parse + signature check and one x509.CreateCertificate (which
// verifies its own signature) with an in-memory P-256 key, with the
// extensions Sigil's server profile puts in, from n goroutines for d.
func SignCeiling(ctx context.Context, csrs []CSR, n int, d time.Duration) (Ceiling, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Ceiling{}, fmt.Errorf("ceiling key: %w", err)
	}
	now := time.Now()
	parentTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ceiling CA"},
		IsCA: true, BasicConstraintsValid: true, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign}
	parentDER, err := x509.CreateCertificate(rand.Reader, parentTmpl, parentTmpl, &key.PublicKey, key)
	if err != nil {
		return Ceiling{}, fmt.Errorf("ceiling CA: %w", err)
	}
	parent, err := x509.ParseCertificate(parentDER)
	if err != nil {
		return Ceiling{}, fmt.Errorf("ceiling CA: %w", err)
	}
	name := fmt.Sprintf("sign: CSR parse+verify + x509.CreateCertificate, %d goroutines", n)
	return measureLoop(ctx, name, n, d, func(w int, i int64) error {
		c := csrs[(int(i)*max(n, 1)+w)%len(csrs)]
		csr, err := x509.ParseCertificateRequest(c.DER)
		if err != nil {
			return err
		}
		if err := csr.CheckSignature(); err != nil {
			return err
		}
		serial := new(big.Int).Lsh(big.NewInt(int64(w)+1), 64)
		serial.Add(serial, big.NewInt(i+1))
		t := time.Now()
		tmpl := &x509.Certificate{
			SerialNumber: serial, Subject: csr.Subject, DNSNames: csr.DNSNames, URIs: csr.URIs,
			NotBefore: t.Add(-time.Minute), NotAfter: t.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true, AuthorityKeyId: parent.SubjectKeyId,
			CRLDistributionPoints: []string{"http://127.0.0.1/crl/0.crl"},
			OCSPServer:            []string{"http://127.0.0.1/ocsp"},
			IssuingCertificateURL: []string{"http://127.0.0.1/ca.crt"},
		}
		_, err = x509.CreateCertificate(rand.Reader, tmpl, parent, csr.PublicKey, key)
		return err
	})
}

// Cores is how many goroutines the "per machine" ceilings use.
func Cores() int { return runtime.GOMAXPROCS(0) }
