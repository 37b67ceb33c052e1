package acme

import (
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
	statusPending     = "pending"
	statusReady       = "ready"
	statusProcessing  = "processing"
	statusValid       = "valid"
	statusInvalid     = "invalid"
	statusDeactivated = "deactivated"
	statusRevoked     = "revoked"
	statusExpired     = "expired"
)

// Identifier is an ACME identifier.
type Identifier struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func (id Identifier) key() string { return id.Type + ":" + id.Value }

// account is the stored account.
type account struct {
	ID          string          `json:"id"`
	Status      string          `json:"status"`
	Contact     []string        `json:"contact,omitempty"`
	TermsAgreed bool            `json:"termsAgreed,omitempty"`
	Key         json.RawMessage `json:"key"`
	EABKeyID    string          `json:"eabKeyID,omitempty"`
	CreatedAt   time.Time       `json:"createdAt"`
}

// order is the stored order. Status is pending (covering ready, which is
// computed from the authorizations), processing, valid or invalid.
type order struct {
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

// challenge is embedded in its authorization.
type challenge struct {
	Type      string     `json:"type"`
	Token     string     `json:"token"`
	Status    string     `json:"status"`
	Validated *time.Time `json:"validated,omitempty"`
	Started   *time.Time `json:"started,omitempty"` // when validation (last) began
	Error     *Problem   `json:"error,omitempty"`
}

// authorization is the stored authorization with its challenges.
type authorization struct {
	ID         string       `json:"id"`
	AccountID  string       `json:"accountID"`
	Identifier Identifier   `json:"identifier"` // without "*."
	Wildcard   bool         `json:"wildcard,omitempty"`
	Status     string       `json:"status"`
	Expires    time.Time    `json:"expires"`
	Challenges []*challenge `json:"challenges"`
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

func decode[T any](o *storage.ACMEObject) (*T, error) {
	v := new(T)
	if err := json.Unmarshal(o.Data, v); err != nil {
		return nil, fmt.Errorf("acme: decoding %s %s: %w", o.Kind, o.ID, err)
	}
	return v, nil
}

func encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("acme: encoding: %w", err)
	}
	return b, nil
}
