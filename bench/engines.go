package bench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// TokensSetup is the tokens scenario's mount and role: opaque tokens.
func TokensSetup(mount, role string) EngineSetup {
	return EngineSetup{Type: "tokens", Mount: mount, Role: role, RoleFields: map[string]string{"format": "opaque", "ttl": "10m", "scopes": "bench"}}
}

// TokensMintIntrospect is the tokens scenario: mint an opaque token
// (Creds, the secret sealed to the worker's key and opened), introspect
// it (must be active), then revoke its lease so the run leaves nothing.
type TokensMintIntrospect struct {
	mount, role string
	conns       []*grpc.ClientConn
	keys        []recipientKey
}

// NewTokensMintIntrospect dials min(conns, workers) connections.
func NewTokensMintIntrospect(c SigilConn, mount, role string, workers, conns int) (*TokensMintIntrospect, error) {
	keys, err := newRecipientKeys(workers)
	if err != nil {
		return nil, err
	}
	s := &TokensMintIntrospect{mount: mount, role: role, keys: keys}
	if s.conns, err = dialPool(c, workers, conns); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *TokensMintIntrospect) Name() string   { return "tokens" }
func (s *TokensMintIntrospect) Target() string { return "sigil" }

func (s *TokensMintIntrospect) Do(ctx context.Context, worker int) error {
	k := s.keys[worker]
	cc := s.conns[worker%len(s.conns)]
	resp, err := sigilv1.NewEngineServiceClient(cc).Creds(ctx, &sigilv1.CredsRequest{Mount: s.mount, Role: s.role, Recipient: k.pub})
	if err != nil {
		return fmt.Errorf("creds %s/%s: %w", s.mount, s.role, err)
	}
	id := resp.GetLeaseId()
	data, err := openData(k.priv, resp.GetEnvelope(), id)
	if err == nil {
		var ir *sigilv1.IntrospectResponse
		ir, err = sigilv1.NewTokensServiceClient(cc).Introspect(ctx, &sigilv1.IntrospectRequest{Token: data["token"]})
		if err == nil && !ir.GetActive() {
			err = errors.New("fresh token introspected inactive")
		}
	}
	clear(data)
	_, rerr := sigilv1.NewLeaseServiceClient(cc).Revoke(context.WithoutCancel(ctx), &sigilv1.RevokeLeaseRequest{Id: id})
	if err != nil {
		return fmt.Errorf("token %s: %w", id, err)
	}
	if rerr != nil {
		return fmt.Errorf("revoke %s: %w", id, rerr)
	}
	return nil
}

func (s *TokensMintIntrospect) Close() error {
	return closeAll(s.conns)
}

// TransitEncrypt is the transit-encrypt scenario: encrypt Batch random
// TransitPlaintextSize-byte plaintexts per call with an aes256-gcm key.
// Throughput counts calls; the report's note gives items per call.
type TransitEncrypt struct {
	mount, key string
	batch      int
	conns      []*grpc.ClientConn
	items      []*sigilv1.TransitItem
}

// SetupTransit enables a transit mount (reusing it) and creates the key.
func SetupTransit(ctx context.Context, cc *grpc.ClientConn, mount, key string) error {
	_, err := sigilv1.NewEngineServiceClient(cc).Enable(ctx, &sigilv1.EnableEngineRequest{Type: "transit", Mount: mount})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("enable transit at %s: %w", mount, err)
	}
	_, err = sigilv1.NewTransitServiceClient(cc).CreateKey(ctx, &sigilv1.TransitKeyRequest{Mount: mount, Name: key})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("create transit key: %w", err)
	}
	return nil
}

// NewTransitEncrypt dials min(conns, workers) connections.
func NewTransitEncrypt(c SigilConn, mount, key string, batch, workers, conns int) (*TransitEncrypt, error) {
	s := &TransitEncrypt{mount: mount, key: key, batch: max(batch, 1)}
	var err error
	for range s.batch {
		pt := make([]byte, TransitPlaintextSize)
		_, _ = rand.Read(pt)
		s.items = append(s.items, &sigilv1.TransitItem{Plaintext: pt})
	}
	if s.conns, err = dialPool(c, workers, conns); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *TransitEncrypt) Name() string   { return "transit-encrypt" }
func (s *TransitEncrypt) Target() string { return "sigil" }

func (s *TransitEncrypt) Do(ctx context.Context, worker int) error {
	cc := s.conns[worker%len(s.conns)]
	resp, err := sigilv1.NewTransitServiceClient(cc).Encrypt(ctx, &sigilv1.TransitBatchRequest{Mount: s.mount, Name: s.key, Items: s.items})
	if err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	if len(resp.GetResults()) != len(s.items) {
		return fmt.Errorf("encrypt: %d results for %d items", len(resp.GetResults()), len(s.items))
	}
	for _, r := range resp.GetResults() {
		if r.GetError() != "" || !strings.HasPrefix(r.GetCiphertext(), "sigil:v") {
			return fmt.Errorf("encrypt: item failed: %s", r.GetError())
		}
	}
	return nil
}

func (s *TransitEncrypt) Close() error {
	return closeAll(s.conns)
}
