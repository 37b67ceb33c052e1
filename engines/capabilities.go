package engines

import (
	"context"
	"time"
)

// Capabilities: optional interfaces an engine implements for operations
// beyond leased secrets. Transports find them by type assertion on the
// mount's Engine (or with Capability) and never name a concrete engine, so
// a new engine type offers an operation by implementing its interface.
// The value types live here, beside the interfaces; the engine packages
// alias them under their own names.

// SSHSigner signs SSH certificates under a role (the keys engine).
type SSHSigner interface {
	// SSHCAPublicKey returns the CA's public key in authorized_keys form.
	SSHCAPublicKey(ctx context.Context) ([]byte, error)
	// SignSSH signs req.PublicKey under role r, refusing any principal the
	// role does not allow.
	SignSSH(ctx context.Context, r Role, req SSHRequest) (*SSHCert, error)
}

// SSHRequest asks for an SSH certificate.
type SSHRequest struct {
	PublicKey  []byte // authorized_keys form
	Principals []string
	TTL        time.Duration
	Identity   string
}

// SSHCert is a signed certificate.
type SSHCert struct {
	Authorized  []byte // authorized_keys form, for the -cert.pub file
	Serial      uint64
	KeyID       string
	ValidBefore time.Time
	Principals  []string
}

// JWKSPublisher publishes the public keys that verify what the engine
// signs (the tokens engine), as a JSON Web Key Set document.
type JWKSPublisher interface {
	JWKS(ctx context.Context) ([]byte, error)
}

// Introspector describes a token it minted (RFC 7662).
type Introspector interface {
	// Introspect checks token against its lease l (nil when the lease does
	// not exist or is not active: the work is still done, so the answer
	// takes the same time). Any mismatch is an error the engine defines as
	// "inactive".
	Introspect(ctx context.Context, token string, l *ActiveLease) (*Introspection, error)
}

// ActiveLease is what introspection needs of a lease: the caller passes an
// active, unexpired lease only.
type ActiveLease struct {
	ID         string
	IssuedAt   time.Time
	ExpiresAt  time.Time
	Revocation []byte // opened revocation data
}

// Introspection is an active token's description (RFC 7662 §2.2).
type Introspection struct {
	TokenType string
	Subject   string
	Audience  []string
	Scopes    []string
	IssuedAt  time.Time
	ExpiresAt time.Time
	LeaseID   string
	Role      string
	Issuer    string
}

// Transit is encryption as a service over named keys (the transit engine).
type Transit interface {
	CreateKey(ctx context.Context, name, typ string, managed bool) error
	RotateKey(ctx context.Context, name string) (int, error)
	ConfigureKey(ctx context.Context, name string, c TransitKeyConfig) error
	DeleteKey(ctx context.Context, name string) error
	ListKeys(ctx context.Context) ([]string, error)
	ReadKey(ctx context.Context, name string) (*TransitKeyInfo, error)
	Encrypt(ctx context.Context, name string, items []TransitItem) ([]TransitResult, error)
	Decrypt(ctx context.Context, name string, items []TransitItem) ([]TransitResult, error)
	Rewrap(ctx context.Context, name string, items []TransitItem) ([]TransitResult, error)
	DataKey(ctx context.Context, name string, bits int, ad []byte) (plaintext []byte, wrapped string, err error)
	Sign(ctx context.Context, name string, input []byte, o TransitSignOptions) (string, error)
	Verify(ctx context.Context, name string, input []byte, signature string, o TransitSignOptions) (bool, error)
	HMAC(ctx context.Context, name string, input []byte) (string, error)
	VerifyHMAC(ctx context.Context, name string, input []byte, tag string) (bool, error)
}

// TransitKeyConfig changes a key's settings; nil fields are left alone.
type TransitKeyConfig struct {
	MinDecryptionVersion *int
	DeletionAllowed      *bool
}

// TransitKeyInfo describes a key without any secret material.
type TransitKeyInfo struct {
	Name                 string
	Type                 string
	Managed              bool
	Latest               int
	MinDecryptionVersion int
	DeletionAllowed      bool
	Versions             []TransitKeyVersion
}

// TransitKeyVersion is one version; PublicKeyPEM is set for asymmetric
// keys.
type TransitKeyVersion struct {
	Version      int
	Created      time.Time
	PublicKeyPEM string
}

// TransitItem is one input of a batch operation.
type TransitItem struct {
	Plaintext      []byte
	Ciphertext     string
	AssociatedData []byte
}

// TransitResult is one output of a batch operation; Err is per item.
type TransitResult struct {
	Ciphertext string
	Plaintext  []byte
	Err        error
}

// TransitSignOptions choose how an input is signed.
type TransitSignOptions struct {
	// Prehashed: input is already a SHA-256 digest (ECDSA and RSA only).
	Prehashed bool
	// RSAPKCS1v15 selects PKCS #1 v1.5 instead of the default PSS.
	RSAPKCS1v15 bool
}
