package render

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/envelope"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// callTimeout bounds one server call when the context has no deadline.
const callTimeout = 30 * time.Second

// GRPCSource is a Source over Sigil's gRPC API, authenticated however conn
// is (a token, the node SVID). Each secret is sealed by the server to a
// key made for that one call and opened here, so it crosses the wire only
// inside an HPKE envelope.
type GRPCSource struct {
	engines sigilv1.EngineServiceClient
	kv      sigilv1.KVServiceClient
	ca      sigilv1.CAServiceClient
	leases  sigilv1.LeaseServiceClient
}

// NewGRPCSource returns a Source that calls the server over conn.
func NewGRPCSource(conn grpc.ClientConnInterface) *GRPCSource {
	return &GRPCSource{engines: sigilv1.NewEngineServiceClient(conn), kv: sigilv1.NewKVServiceClient(conn),
		ca: sigilv1.NewCAServiceClient(conn), leases: sigilv1.NewLeaseServiceClient(conn)}
}

var _ Source = (*GRPCSource)(nil)

func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, callTimeout)
}

// classify wraps an RPC failure: transient when retrying as is may work.
func classify(op string, err error) error {
	err = fmt.Errorf("%s: %w", op, err)
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) {
			return &TransientError{Err: err}
		}
		return err
	}
	switch st.Code() {
	// Canceled with the caller's context alive is the connection going
	// away under the call.
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal, codes.Unknown, codes.Canceled:
		return &TransientError{Err: err}
	}
	return err
}

// OneCallKey makes the X25519 key one response is sealed to, and the
// function that opens it (the agent's JWT-SVIDs use it too).
func OneCallKey() (open func(sealed []byte, id string) (map[string]string, error), r *sigilv1.Recipient, err error) {
	priv, rec, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
	if err != nil {
		return nil, nil, err
	}
	open = func(sealed []byte, id string) (map[string]string, error) {
		var en envelope.Envelope
		if err := en.UnmarshalBinary(sealed); err != nil {
			return nil, fmt.Errorf("server sent a malformed envelope for %s: %w", id, err)
		}
		data, err := envelope.OpenData(priv, &en, id)
		if err != nil {
			return nil, fmt.Errorf("open the envelope of %s: %w", id, err)
		}
		return data, nil
	}
	return open, &sigilv1.Recipient{Kem: uint32(rec.KEM), PublicKey: rec.PublicKey}, nil
}

// Creds implements Source.
func (s *GRPCSource) Creds(ctx context.Context, mount, role string) (*Lease, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	open, rec, err := OneCallKey()
	if err != nil {
		return nil, err
	}
	resp, err := s.engines.Creds(ctx, &sigilv1.CredsRequest{Mount: mount, Role: role, Recipient: rec})
	if err != nil {
		return nil, classify("creds "+mount+"/"+role, err)
	}
	if resp.GetWrapToken() != "" {
		return nil, fmt.Errorf("creds %s/%s: the server wrapped the response; the agent needs it sealed to its key", mount, role)
	}
	data, err := open(resp.GetEnvelope(), resp.GetLeaseId())
	if err != nil {
		return nil, err
	}
	for k, v := range resp.GetPublicData() {
		if _, ok := data[k]; !ok {
			data[k] = v
		}
	}
	return &Lease{ID: resp.GetLeaseId(), Duration: time.Duration(resp.GetLeaseDurationSeconds()) * time.Second,
		Renewable: resp.GetRenewable(), Data: data}, nil
}

// KV implements Source.
func (s *GRPCSource) KV(ctx context.Context, mount, path string) (*KVSecret, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	open, rec, err := OneCallKey()
	if err != nil {
		return nil, err
	}
	resp, err := s.kv.Get(ctx, &sigilv1.KVGetRequest{Mount: mount, Path: path, Recipient: rec})
	if err != nil {
		return nil, classify("kv "+mount+"/"+path, err)
	}
	// The payload binds the secret to its id: kv:MOUNT/data/PATH.
	enc, err := open(resp.GetEnvelope(), "kv:"+mount+"/data/"+path)
	if err != nil {
		return nil, err
	}
	data := make(map[string][]byte, len(enc))
	for k, v := range enc {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("kv %s/%s: field %s: malformed value in the envelope", mount, path, k)
		}
		data[k] = b
	}
	return &KVSecret{Version: resp.GetVersion().GetVersion(), Data: data}, nil
}

// Cert implements Source: a P-256 key is made here and only its CSR is
// sent. name is a DNS name, an IP address or a spiffe:// ID.
func (s *GRPCSource) Cert(ctx context.Context, profile, name string) (*Cert, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	key, csr, err := newCSR(name)
	if err != nil {
		return nil, err
	}
	resp, err := s.ca.Sign(ctx, &sigilv1.SignRequest{Csr: csr, Profile: profile})
	if err != nil {
		return nil, classify("cert "+profile+" "+name, err)
	}
	block, _ := pem.Decode([]byte(resp.GetCertificatePem()))
	if block == nil {
		return nil, fmt.Errorf("cert %s %s: the server sent no PEM certificate", profile, name)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("cert %s %s: %w", profile, name, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	clear(der)
	return &Cert{CertPEM: resp.GetCertificatePem(), KeyPEM: string(keyPEM), ChainPEM: resp.GetChainPem(),
		Serial: resp.GetSerial(), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}, nil
}

// newCSR makes a key and a CSR naming name.
func newCSR(name string) (*ecdsa.PrivateKey, []byte, error) {
	tmpl := &x509.CertificateRequest{}
	switch {
	case strings.HasPrefix(name, "spiffe://"):
		u, err := url.Parse(name)
		if err != nil || u.Host == "" {
			return nil, nil, fmt.Errorf("cert name %q: not a SPIFFE ID", name)
		}
		tmpl.URIs = []*url.URL{u}
	case net.ParseIP(name) != nil:
		tmpl.IPAddresses = []net.IP{net.ParseIP(name)}
	default:
		tmpl.DNSNames = []string{name}
		tmpl.Subject = pkix.Name{CommonName: name}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// Renew implements Source.
func (s *GRPCSource) Renew(ctx context.Context, leaseID string, increment time.Duration) (*LeaseInfo, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	resp, err := s.leases.Renew(ctx, &sigilv1.RenewLeaseRequest{Id: leaseID, IncrementSeconds: int64(increment / time.Second)})
	if err != nil {
		return nil, classify("renew "+leaseID, err)
	}
	return &LeaseInfo{ExpiresAt: time.Unix(resp.GetExpiresAtUnix(), 0), MaxExpiresAt: time.Unix(resp.GetMaxExpiresAtUnix(), 0)}, nil
}

// Revoke implements Source.
func (s *GRPCSource) Revoke(ctx context.Context, leaseID string) error {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if _, err := s.leases.Revoke(ctx, &sigilv1.RevokeLeaseRequest{Id: leaseID}); err != nil {
		return classify("revoke "+leaseID, err)
	}
	return nil
}
