package render

import (
	"context"
	"errors"
	"time"
)

// Source is what the renderer needs from the server. Every secret arrives
// sealed to a key held only by the caller (GRPCSource opens it); a Source
// returns it opened.
type Source interface {
	// Creds mints a dynamic credential from MOUNT/ROLE.
	Creds(ctx context.Context, mount, role string) (*Lease, error)
	// KV reads the current version of MOUNT/PATH; values are the stored
	// bytes.
	KV(ctx context.Context, mount, path string) (*KVSecret, error)
	// Cert issues a certificate for name from profile, for a key made
	// here.
	Cert(ctx context.Context, profile, name string) (*Cert, error)
	// Renew extends a lease by increment (0: the role's TTL).
	Renew(ctx context.Context, leaseID string, increment time.Duration) (*LeaseInfo, error)
	// Revoke revokes a lease.
	Revoke(ctx context.Context, leaseID string) error
}

// Lease is a minted credential.
type Lease struct {
	ID        string
	Duration  time.Duration
	Renewable bool
	// Data holds the secret fields (username, password, ...) and the
	// public ones.
	Data map[string]string
}

// LeaseInfo is a lease's state after a renewal.
type LeaseInfo struct {
	ExpiresAt    time.Time
	MaxExpiresAt time.Time
}

// KVSecret is one version of a kv secret.
type KVSecret struct {
	Version int64
	Data    map[string][]byte
}

// Cert is an issued certificate with its key, all PEM.
type Cert struct {
	CertPEM, KeyPEM, ChainPEM string
	Serial                    string
	NotBefore, NotAfter       time.Time
}

// TransientError marks a failure worth retrying as it is: the server
// unreachable, overloaded or timing out. Any other error from a Source
// is a refusal (a revoked lease, a missing secret, a denied path).
type TransientError struct{ Err error }

func (e *TransientError) Error() string { return e.Err.Error() }
func (e *TransientError) Unwrap() error { return e.Err }

// IsTransient reports whether err is a TransientError.
func IsTransient(err error) bool {
	var te *TransientError
	return errors.As(err, &te)
}
