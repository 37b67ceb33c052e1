package jwt

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// asymmetricAlgs are the signature algorithms accepted: public-key ones
// only. "none" and the HMAC algorithms are refused before any key is
// looked at, so a token "signed" with an RSA public key as an HMAC secret
// (algorithm confusion) never verifies.
var asymmetricAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA}

func algNames() []string {
	out := make([]string, len(asymmetricAlgs))
	for i, a := range asymmetricAlgs {
		out[i] = string(a)
	}
	return out
}

// errUnknownKID: no key of the set has the token's key id, even after a
// refresh.
var errUnknownKID = errors.New("unknown key id")

// maxJWKSBytes bounds a fetched JWKS document.
const maxJWKSBytes = 1 << 20

// remoteKeys is a JWKS fetched over HTTP(S) and cached. A token whose kid
// is unknown triggers a refresh, at most once per minRefresh: a flood of
// tokens with made-up kids costs the issuer one fetch per interval, not
// one per token. It implements go-oidc's KeySet.
type remoteKeys struct {
	url        string
	client     *http.Client
	minRefresh time.Duration
	now        func() time.Time

	mu      sync.Mutex
	keys    []jose.JSONWebKey
	fetched time.Time
	// fetchMu serialises fetches so concurrent unknown kids share one.
	fetchMu sync.Mutex
}

func newRemoteKeys(url string, client *http.Client, minRefresh time.Duration) *remoteKeys {
	return &remoteKeys{url: url, client: client, minRefresh: minRefresh, now: time.Now}
}

// httpClient trusts caPEM (when set) instead of the system roots.
func httpClient(caPEM string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if caPEM != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(caPEM)) {
			return nil, errors.New("no PEM certificate found")
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, nil
}

func (r *remoteKeys) cached() ([]jose.JSONWebKey, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keys, r.fetched
}

// refresh fetches the set unless it was fetched within minRefresh (or
// since the caller looked at it: since).
func (r *remoteKeys) refresh(ctx context.Context, since time.Time) ([]jose.JSONWebKey, error) {
	r.fetchMu.Lock()
	defer r.fetchMu.Unlock()
	keys, fetched := r.cached()
	if fetched.After(since) || (!fetched.IsZero() && r.now().Sub(fetched) < r.minRefresh) {
		return keys, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS %s: %w", r.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch JWKS %s: HTTP %d", r.url, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS %s: %w", r.url, err)
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("JWKS %s exceeds %d bytes", r.url, maxJWKSBytes)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("JWKS %s: %w", r.url, err)
	}
	var pub []jose.JSONWebKey
	for _, k := range set.Keys {
		// Only public keys: a JWKS that leaks a private or symmetric key
		// must not turn into an HMAC verifier.
		if k.Valid() && k.IsPublic() {
			pub = append(pub, k)
		}
	}
	r.mu.Lock()
	r.keys, r.fetched = pub, r.now()
	r.mu.Unlock()
	return pub, nil
}

// VerifySignature implements oidc.KeySet.
func (r *remoteKeys) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSignedCompact(raw, asymmetricAlgs)
	if err != nil {
		return nil, err
	}
	kid := jws.Signatures[0].Header.KeyID
	keys, fetched := r.cached()
	if keys == nil || !hasKID(keys, kid) {
		if keys, err = r.refresh(ctx, fetched); err != nil {
			return nil, err
		}
	}
	return verifyWith(jws, keys, kid)
}

func hasKID(keys []jose.JSONWebKey, kid string) bool {
	if kid == "" {
		return true
	}
	for _, k := range keys {
		if k.KeyID == kid {
			return true
		}
	}
	return false
}

func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) ([]byte, error) {
	found := false
	for i := range keys {
		if kid != "" && keys[i].KeyID != kid {
			continue
		}
		found = true
		if payload, err := jws.Verify(&keys[i]); err == nil {
			return payload, nil
		}
	}
	if !found {
		return nil, errUnknownKID
	}
	return nil, errBadSignature
}

var errBadSignature = errors.New("signature does not verify")

// staticKeys are jwt_validation_pubkeys.
type staticKeys struct{ keys []jose.JSONWebKey }

func (s staticKeys) VerifySignature(_ context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSignedCompact(raw, asymmetricAlgs)
	if err != nil {
		return nil, err
	}
	// Static keys have no ids: each is tried.
	return verifyWith(jws, s.keys, "")
}

func publicKeys(pems []crypto.PublicKey) []jose.JSONWebKey {
	out := make([]jose.JSONWebKey, 0, len(pems))
	for _, k := range pems {
		out = append(out, jose.JSONWebKey{Key: k})
	}
	return out
}
