package ra

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// Object kinds in storage.
const (
	kindAccount = "account"
	kindOrder   = "order"
	kindAuthz   = "authz"
	kindCert    = "cert"
	kindEAB     = "eab"
)

// Statuses (RFC 8555 §7.1.6).
const (
	StatusPending     = "pending"
	StatusReady       = "ready"
	StatusProcessing  = "processing"
	StatusValid       = "valid"
	StatusInvalid     = "invalid"
	StatusDeactivated = "deactivated"
	StatusRevoked     = "revoked"
	StatusExpired     = "expired"
)

// Identifier is an ACME identifier.
type Identifier struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func (id Identifier) key() string { return id.Type + ":" + id.Value }

// Account is an ACME account (stored as JSON; the field names are the
// storage format).
type Account struct {
	ID          string          `json:"id"`
	Status      string          `json:"status"`
	Contact     []string        `json:"contact,omitempty"`
	TermsAgreed bool            `json:"termsAgreed,omitempty"`
	Key         json.RawMessage `json:"key"` // the public JWK
	EABKeyID    string          `json:"eabKeyID,omitempty"`
	CreatedAt   time.Time       `json:"createdAt"`

	prov string              // provisioner name
	obj  *storage.ACMEObject // the stored row (its version guards updates)
}

// Provisioner is the name of the account's provisioner.
func (a *Account) Provisioner() string { return a.prov }

// Thumbprint is the RFC 7638 thumbprint of the account key.
func (a *Account) Thumbprint() string { return a.obj.LookupKey }

// Order is an ACME order. The stored Status is pending (covering ready,
// which is computed from the authorizations), processing, valid or
// invalid; the RA returns orders with the computed status.
type Order struct {
	ID          string       `json:"id"`
	AccountID   string       `json:"accountID"`
	Status      string       `json:"status"`
	Expires     time.Time    `json:"expires"`
	Identifiers []Identifier `json:"identifiers"`
	AuthzIDs    []string     `json:"authzIDs"`
	Profile     string       `json:"profile"`
	Replaces    string       `json:"replaces,omitempty"` // ARI certID
	CertSerial  string       `json:"certSerial,omitempty"`
	Error       *Problem     `json:"error,omitempty"`
	CreatedAt   time.Time    `json:"createdAt"`
}

// Challenge is embedded in its authorization.
type Challenge struct {
	Type      string     `json:"type"`
	Token     string     `json:"token"`
	Status    string     `json:"status"`
	Validated *time.Time `json:"validated,omitempty"`
	Started   *time.Time `json:"started,omitempty"` // when validation (last) began
	Error     *Problem   `json:"error,omitempty"`
}

// Authorization is an authorization with its challenges.
type Authorization struct {
	ID         string       `json:"id"`
	AccountID  string       `json:"accountID"`
	Identifier Identifier   `json:"identifier"` // without "*."
	Wildcard   bool         `json:"wildcard,omitempty"`
	Status     string       `json:"status"`
	Expires    time.Time    `json:"expires"`
	Challenges []*Challenge `json:"challenges"`
}

// certRecord links an issued certificate to its account and order.
type certRecord struct {
	Serial     string `json:"serial"`
	OrderID    string `json:"orderID"`
	ReplacedBy string `json:"replacedBy,omitempty"` // order that finalized a replacement
}

// eabKey is an External Account Binding key; HMAC is sealed.
type eabKey struct {
	KeyID      string    `json:"keyID"`
	SealedHMAC []byte    `json:"sealedHMAC"`
	Policy     EABPolicy `json:"policy"`
	AccountID  string    `json:"accountID,omitempty"`
	CreatedAt  time.Time `json:"createdAt"`
	BoundAt    time.Time `json:"boundAt,omitzero"`
}

// decode unmarshals a stored object's data.
func decode[T any](o *storage.ACMEObject) (*T, error) {
	v := new(T)
	if err := json.Unmarshal(o.Data, v); err != nil {
		return nil, fmt.Errorf("acme: decoding %s %s: %w", o.Kind, o.ID, err)
	}
	return v, nil
}

// encode marshals an object's data for storage.
func encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("acme: encoding: %w", err)
	}
	return b, nil
}

// newID returns a random identifier (128 bits, base32).
func newID() string { return rand.Text() }

// newToken returns a challenge token: 256 random bits, base64url.
func newToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}
