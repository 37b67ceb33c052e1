package wfe

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	jose "github.com/go-jose/go-jose/v4"
)

// allowedAlgs are the JWS algorithms accepted for account keys.
var allowedAlgs = []string{string(jose.ES256), string(jose.ES384), string(jose.RS256), string(jose.EdDSA)}

// parseAlgs is what go-jose may parse; the allow-list check comes after, so
// that an algorithm outside it gets badSignatureAlgorithm, not malformed.
var parseAlgs = []jose.SignatureAlgorithm{
	jose.ES256, jose.ES384, jose.ES512, jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512, jose.EdDSA, jose.HS256, jose.HS384, jose.HS512,
}

// flattened is the outer shape RFC 8555 §6.2 requires: the flattened JSON
// serialization with a protected header only. It is decoded only to reject
// other shapes; go-jose parses and verifies the JWS itself.
type flattened struct {
	Protected  *string         `json:"protected"`
	Payload    *string         `json:"payload"`
	Signature  *string         `json:"signature"`
	Header     json.RawMessage `json:"header"`
	Signatures json.RawMessage `json:"signatures"`
}

// parsedJWS is a syntactically valid, not yet verified, ACME JWS.
type parsedJWS struct {
	jws   *jose.JSONWebSignature
	alg   string
	nonce string
	url   string
	kid   string
	jwk   *jose.JSONWebKey
}

// parseJWS parses body as an ACME request JWS and checks the protected
// header's shape (RFC 8555 §6.2). It does not verify the signature, the
// nonce or the url against the request.
func parseJWS(body []byte) (*parsedJWS, *problem) {
	var f flattened
	if err := json.Unmarshal(body, &f); err != nil {
		return nil, malformed("request body is not a JSON JWS: %v", err)
	}
	if f.Signatures != nil || f.Header != nil {
		return nil, malformed("JWS must use the flattened serialization with a protected header only")
	}
	if f.Protected == nil || f.Payload == nil || f.Signature == nil || *f.Protected == "" || *f.Signature == "" {
		return nil, malformed("JWS needs protected, payload and signature")
	}
	jws, err := jose.ParseSignedJSON(string(body), parseAlgs)
	if err != nil {
		if hdr, herr := protectedAlg(*f.Protected); herr == nil && hdr != "" && !slices.Contains(allowedAlgs, hdr) {
			return nil, badAlg(hdr)
		}
		return nil, malformed("parsing JWS: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, malformed("JWS must have exactly one signature")
	}
	sig := jws.Signatures[0]
	h := sig.Protected
	p := &parsedJWS{jws: jws, alg: h.Algorithm, nonce: h.Nonce, kid: h.KeyID, jwk: h.JSONWebKey}
	if u, ok := h.ExtraHeaders["url"].(string); ok {
		p.url = u
	} else if _, present := h.ExtraHeaders["url"]; present {
		return nil, malformed("url header must be a string")
	}
	if _, ok := h.ExtraHeaders["b64"]; ok {
		return nil, malformed("the b64 header is not allowed")
	}
	return p, nil
}

// protectedAlg reads "alg" from a protected header, only to choose the
// error type when go-jose refuses the algorithm.
func protectedAlg(protected string) (string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(protected)
	if err != nil {
		return "", err
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return "", err
	}
	return h.Alg, nil
}

func badAlg(alg string) *problem {
	p := prob(http.StatusBadRequest, "badSignatureAlgorithm", "JWS algorithm %q is not supported", alg)
	p.Algorithms = slices.Clone(allowedAlgs)
	return p
}

// checkHeader checks alg is allowed and that exactly one of kid
// and jwk is present, as the endpoint wants.
func (p *parsedJWS) checkHeader(wantJWK bool) *problem {
	if !slices.Contains(allowedAlgs, p.alg) {
		return badAlg(p.alg)
	}
	switch {
	case p.kid != "" && p.jwk != nil:
		return malformed("JWS must have either kid or jwk, not both")
	case wantJWK && p.jwk == nil:
		return malformed("this request must be signed with a jwk header (no kid)")
	case !wantJWK && p.kid == "":
		return malformed("this request must be signed with a kid header (no jwk)")
	}
	if p.jwk != nil {
		if !p.jwk.Valid() || !p.jwk.IsPublic() {
			return prob(http.StatusBadRequest, "badPublicKey", "invalid jwk")
		}
		if err := checkKeyAlg(p.jwk, p.alg); err != nil {
			return prob(http.StatusBadRequest, "badPublicKey", "%v", err)
		}
	}
	return nil
}

// verify checks the signature with key and returns the payload.
func (p *parsedJWS) verify(key *jose.JSONWebKey) ([]byte, *problem) {
	if err := checkKeyAlg(key, p.alg); err != nil {
		return nil, malformed("JWS signature invalid: %v", err)
	}
	payload, err := p.jws.Verify(key)
	if err != nil {
		return nil, malformed("JWS signature invalid")
	}
	return payload, nil
}

// checkKeyAlg ties alg to the key type so a key cannot be used with
// another algorithm family.
func checkKeyAlg(key *jose.JSONWebKey, alg string) error {
	kt := keyType(key)
	ok := map[string]string{"ES256": "EC P-256", "ES384": "EC P-384", "RS256": "RSA", "EdDSA": "OKP Ed25519"}[alg] == kt
	if !ok {
		return fmt.Errorf("algorithm %s does not match key type %s", alg, kt)
	}
	return nil
}

var errEmptyPayload = errors.New("empty payload")

// decodePayload unmarshals a JSON payload strictly; an empty payload is
// POST-as-GET and returns errEmptyPayload.
func decodePayload(payload []byte, v any) error {
	if len(payload) == 0 {
		return errEmptyPayload
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	if err := dec.Decode(v); err != nil {
		return malformed("payload: %v", err)
	}
	return nil
}

func keyType(key *jose.JSONWebKey) string {
	switch k := key.Key.(type) {
	case *ecdsa.PublicKey:
		return "EC " + k.Curve.Params().Name
	case *ecdsa.PrivateKey:
		return "private"
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 || k.N.BitLen() > 8192 {
			return fmt.Sprintf("RSA-%d", k.N.BitLen())
		}
		return "RSA"
	case ed25519.PublicKey:
		return "OKP Ed25519"
	}
	return fmt.Sprintf("%T", key.Key)
}
