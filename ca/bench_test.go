package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"sync/atomic"
	"testing"
	"time"
)

// benchCSRs pre-generates n distinct CSRs (fresh keys, as real clients
// send), so key generation is outside the measurement.
func benchCSRs(b *testing.B, n int) [][]byte {
	b.Helper()
	n = max(1, min(n, 4096))
	out := make([][]byte, n)
	for i := range out {
		out[i] = serverCSR(b, "bench.example.test")
	}
	return out
}

// BenchmarkSign is CSR → stored certificate on the software keystore and
// SQLite: parse and verify the CSR, policy checks, pre-issuance lint
// (throwaway signature + zlint), the real signature and the inventory
// transaction.
func BenchmarkSign(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b, testConfig(), true)
	csrs := benchCSRs(b, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if _, err := e.ca.Sign(ctx, SignRequest{CSR: csrs[i%len(csrs)], Requester: "bench"}); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}

// BenchmarkSignParallel is BenchmarkSign from GOMAXPROCS goroutines.
func BenchmarkSignParallel(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b, testConfig(), true)
	csrs := benchCSRs(b, b.N)
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			if _, err := e.ca.Sign(ctx, SignRequest{CSR: csrs[int(i)%len(csrs)], Requester: "bench"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "certs/s")
}

// BenchmarkRawCSRVerifyAndSign is the standard-library floor: one CSR
// parse+verify and one x509.CreateCertificate (which verifies its own
// signature) with an in-memory P-256 key.
func BenchmarkRawCSRVerifyAndSign(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	parent := &x509.Certificate{SerialNumber: big.NewInt(1), IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	csrs := benchCSRs(b, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		blk, _ := pem.Decode(csrs[i%len(csrs)])
		i++
		csr, err := x509.ParseCertificateRequest(blk.Bytes)
		if err != nil {
			b.Fatal(err)
		}
		if err := csr.CheckSignature(); err != nil {
			b.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), DNSNames: csr.DNSNames,
			NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if _, err := x509.CreateCertificate(rand.Reader, tmpl, parent, csr.PublicKey, key); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}
