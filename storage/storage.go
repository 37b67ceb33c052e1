// Package storage is Sigil's storage authority: typed repositories for each
// domain (certificates, CA issuers, sealed key blobs, the barrier keyring,
// tokens, engine mounts and leases) over two backends that share one schema
// and one conformance suite: embedded SQLite (the default) and PostgreSQL.
//
// Storage never sees a secret in clear. Fields named Sealed* hold ciphertext
// produced by the barrier above it; storage stores and returns them verbatim.
package storage

import (
	"context"
	"errors"
	"time"
)

// Errors callers branch on; implementations wrap them with context.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("already exists")
)

// Store is one open database. Repositories obtained from a Store run their
// statements outside any transaction; those obtained inside InTx share it.
//
// Times are stored at microsecond precision and returned in UTC; a zero
// time.Time is stored as absent and returned as the zero value. Puts fill a
// zero CreatedAt with the current time (in the caller's struct too).
type Store interface {
	Repos
	// InTx runs fn in one transaction: it commits if fn returns nil and rolls
	// back otherwise (and on panic, which it then re-raises). fn must use
	// only the tx repositories: on SQLite the transaction holds the write
	// lock, so a write through the Store's own repositories would wait for
	// it until the busy timeout. A repository error such as ErrConflict
	// leaves the transaction usable.
	InTx(ctx context.Context, fn func(tx Repos) error) error
	// Ping checks the database answers.
	Ping(ctx context.Context) error
	// Backend names the backend: "sqlite" or "postgres".
	Backend() string
	// Close closes the database.
	Close() error
}

// Repos groups the typed repositories.
type Repos interface {
	Certificates() Certificates
	Issuers() Issuers
	KeyBlobs() KeyBlobs
	Keyring() Keyring
	Tokens() Tokens
	Mounts() Mounts
	Leases() Leases
	Settings() Settings
	Policies() Policies
	Audit() AuditLog
	ACME() ACME
	KV() KV
	CRLs() CRLs
}

// CertStatus is a certificate's revocation status.
type CertStatus string

// Certificate statuses.
const (
	CertValid   CertStatus = "valid"
	CertRevoked CertStatus = "revoked"
)

// Certificate is one issued certificate as the inventory records it.
type Certificate struct {
	Serial    string // lowercase hex, no leading zeros stripped beyond big.Int.Text(16)
	IssuerID  string
	Subject   string
	DNSNames  []string
	IPs       []string
	URIs      []string
	Emails    []string
	NotBefore time.Time
	NotAfter  time.Time
	Profile   string
	Requester string
	DER       []byte
	Status    CertStatus
	RevokedAt time.Time // zero unless revoked
	Reason    int       // RFC 5280 CRLReason, valid when revoked
	CRLShard  int
	CreatedAt time.Time
}

// CertFilter selects certificates for List. Zero fields do not filter.
type CertFilter struct {
	Name           string // any SAN or the subject equals Name
	IssuerID       string
	ExpiringBefore time.Time // NotAfter < ExpiringBefore
	ValidAt        time.Time // NotAfter >= ValidAt (not yet expired)
	RevokedOnly    bool
	CRLShard       *int
	After          string // pagination cursor: serial to start after
	Limit          int    // default 100, at most 1000
}

// Certificates is the certificate inventory.
type Certificates interface {
	// Put records a new certificate; ErrConflict if the serial exists.
	Put(ctx context.Context, c *Certificate) error
	// PutBatch records new certificates, all or none; ErrConflict if a
	// serial exists (or repeats). It writes them with a few statements, not
	// two per certificate (a group commit's round trips to PostgreSQL).
	PutBatch(ctx context.Context, cs []*Certificate) error
	Get(ctx context.Context, serial string) (*Certificate, error)
	// List returns certificates ordered by serial, and the cursor for the
	// next page ("" at the end).
	List(ctx context.Context, f CertFilter) ([]*Certificate, string, error)
	// Revoke marks a certificate revoked; ErrNotFound if absent. Revoking an
	// already revoked certificate keeps the first time and reason and returns
	// ErrConflict. A zero at means now.
	Revoke(ctx context.Context, serial string, reason int, at time.Time) error
	// PruneExpired deletes at most limit certificates whose NotAfter is before
	// cutoff, returning how many it deleted.
	PruneExpired(ctx context.Context, cutoff time.Time, limit int) (int, error)
}

// Issuer is a CA certificate Sigil signs with (a root or an intermediate).
type Issuer struct {
	ID        string // stable identifier, e.g. hex SKI
	Kind      string // "root" or "intermediate"
	KeyName   string // name of the key in custody
	DER       []byte // the certificate
	ChainDER  [][]byte
	Active    bool // signs new certificates
	CRLNumber int64
	CreatedAt time.Time
}

// Issuers records the CA hierarchy.
type Issuers interface {
	Put(ctx context.Context, is *Issuer) error // ErrConflict if ID exists
	Get(ctx context.Context, id string) (*Issuer, error)
	List(ctx context.Context) ([]*Issuer, error)                 // ordered by CreatedAt
	SetActive(ctx context.Context, id string, active bool) error // ErrNotFound
	// NextCRLNumber atomically increments and returns the issuer's CRL
	// number; ErrNotFound if the issuer does not exist.
	NextCRLNumber(ctx context.Context, id string) (int64, error)
}

// CRL is the latest signed CRL of one issuer's CRL shard, stored so that
// every node of a cluster serves the same one (issue 18).
type CRL struct {
	IssuerID string
	Shard    int
	// Number is the CRL number in DER; 0 for a row that only counts
	// revocations (Touch) because no CRL was signed for the shard yet.
	Number     int64
	ThisUpdate time.Time
	NextUpdate time.Time
	DER        []byte // nil from Head and List
	// Fingerprint is a digest of the revoked set DER lists.
	Fingerprint []byte
	// Revision counts the revocations recorded in the shard (Touch); Built
	// is the Revision the DER reflects. Built < Revision: the CRL misses a
	// revocation and must be regenerated.
	Revision int64
	Built    int64
}

// Stale reports whether the CRL misses a recorded revocation or none was
// signed yet.
func (c *CRL) Stale() bool { return c.Number == 0 || c.Built < c.Revision }

// CRLs stores each shard's latest CRL. CRL numbers come from
// Issuers.NextCRLNumber in the transaction that Puts the CRL, so the stored
// number of a shard only ever grows.
type CRLs interface {
	// Head returns a shard's row without DER; ErrNotFound if it has none.
	Head(ctx context.Context, issuerID string, shard int) (*CRL, error)
	// Get returns a shard's row with DER; ErrNotFound if it has none.
	Get(ctx context.Context, issuerID string, shard int) (*CRL, error)
	// List returns every row without DER, ordered by issuer and shard.
	List(ctx context.Context) ([]*CRL, error)
	// Touch records a revocation in a shard: Revision grows by one (the row
	// is created with Number 0 if absent).
	Touch(ctx context.Context, issuerID string, shard int) error
	// Put stores a newly signed CRL (Number, times, DER, Fingerprint,
	// Built) if c.Number is greater than the stored Number; ErrConflict
	// otherwise. Revision is kept (a new row starts at c.Built).
	Put(ctx context.Context, c *CRL) error
}

// KeyBlob is a software-keystore private key, sealed by the barrier.
type KeyBlob struct {
	Name      string
	Type      string
	PublicDER []byte // PKIX public key (not secret)
	Sealed    []byte
	CreatedAt time.Time
}

// KeyBlobs stores sealed software keys.
type KeyBlobs interface {
	Put(ctx context.Context, k *KeyBlob) error // ErrConflict if name exists
	Get(ctx context.Context, name string) (*KeyBlob, error)
	List(ctx context.Context) ([]*KeyBlob, error) // ordered by name
	// ReplaceSealed swaps the sealed bytes of a key (re-encryption under a
	// newer barrier key) if they still equal old; ErrConflict otherwise,
	// ErrNotFound if the key is absent.
	ReplaceSealed(ctx context.Context, name string, old, new []byte) error
	// Delete deletes the named key; ErrNotFound if absent.
	Delete(ctx context.Context, name string) error
}

// Keyring stores the barrier's keyring: one sealed blob, versioned for
// optimistic concurrency.
type Keyring interface {
	// Get returns the sealed keyring and its version; ErrNotFound if none.
	Get(ctx context.Context) (sealed []byte, version int64, err error)
	// Put stores the keyring if the stored version equals prevVersion (0 for
	// none) and returns the new version; ErrConflict otherwise.
	Put(ctx context.Context, sealed []byte, prevVersion int64) (int64, error)
}

// Token is an API token as stored: only a keyed hash of the secret.
type Token struct {
	ID        string
	Hash      []byte // HMAC of the token secret
	Policies  []string
	Meta      map[string]string
	ExpiresAt time.Time // zero: never
	UsesLeft  int       // 0: unlimited
	CreatedAt time.Time
}

// Tokens stores API tokens.
type Tokens interface {
	Put(ctx context.Context, t *Token) error // ErrConflict if ID or Hash exists
	// GetByHash and Get return ErrNotFound for a missing or used-up token.
	// They do not check ExpiresAt: that is the caller's policy.
	GetByHash(ctx context.Context, hash []byte) (*Token, error)
	Get(ctx context.Context, id string) (*Token, error)
	Delete(ctx context.Context, id string) error // ErrNotFound if absent
	// Use consumes one use of a limited token, atomically, and deletes the
	// token when its last use is consumed (so UsesLeft never reads 0, which
	// would mean unlimited). For an unlimited token it only checks that the
	// token exists. ErrNotFound if the token is absent or has no use left.
	Use(ctx context.Context, id string) error
	// Extend sets the expiry of a token that has one (a renewal); a token
	// without an expiry is never given one here. ErrNotFound if the token
	// is absent, used up, or has no expiry.
	Extend(ctx context.Context, id string, expiresAt time.Time) error
}

// Mount is an enabled secret engine at a path.
type Mount struct {
	Path         string
	Type         string
	SealedConfig []byte
	CreatedAt    time.Time
}

// Mounts stores engine mounts and their (sealed) configuration.
type Mounts interface {
	Put(ctx context.Context, m *Mount) error // insert, or replace Type and config (CreatedAt kept)
	Get(ctx context.Context, path string) (*Mount, error)
	List(ctx context.Context) ([]*Mount, error)
	Delete(ctx context.Context, path string) error // ErrNotFound if absent
	// Hold keeps the mount from being deleted until the transaction it runs
	// in ends (a key-share lock on its row on PostgreSQL; SQLite's write lock
	// serialises the transaction anyway); ErrNotFound if absent. A lease
	// stored in that transaction is then seen by a Delete's transaction
	// that counts the mount's leases after deleting it.
	Hold(ctx context.Context, path string) error
	// ReplaceSealed swaps a mount's sealed config (re-encryption under a
	// newer barrier key) if it still equals old; ErrConflict otherwise.
	ReplaceSealed(ctx context.Context, path string, old, new []byte) error
}

// LeaseState is a lease's life-cycle state.
type LeaseState string

// Lease states. A pending lease's secret is being created, or its creation
// failed with an unknown outcome: it is not usable, but it is open like an
// active one (the expiry worker claims it when due, quotas count it)
// because its secret may exist.
const (
	LeasePending     LeaseState = "pending"
	LeaseActive      LeaseState = "active"
	LeaseRevoked     LeaseState = "revoked"
	LeaseIrrevocable LeaseState = "irrevocable"
)

// Open reports whether a lease in state s may still hold a live secret
// that the expiry worker must revoke (pending or active).
func (s LeaseState) Open() bool { return s == LeasePending || s == LeaseActive }

// Lease tracks one minted secret.
type Lease struct {
	ID               string // MOUNT/ROLE/RANDOM
	Mount            string
	Role             string
	Identity         string
	IssuedAt         time.Time
	ExpiresAt        time.Time
	MaxExpiresAt     time.Time
	Renewable        bool
	SealedRevocation []byte
	State            LeaseState
	Attempts         int
	NextAttemptAt    time.Time
	LastError        string
	ClaimedUntil     time.Time
	// Owner is the identity that minted the lease as Sigil authenticated
	// it ("token:ID" or a SPIFFE ID); "" for leases from before owners
	// were recorded, which only administrators may manage.
	Owner string
}

// LeaseFilter selects leases for List.
type LeaseFilter struct {
	Prefix string
	State  LeaseState // "" = any
	After  string
	Limit  int
}

// Leases stores leases. Expiry workers claim due leases in batches so that
// several nodes never revoke one lease at once.
type Leases interface {
	Put(ctx context.Context, l *Lease) error // ErrConflict if ID exists; empty State means active
	// ReplaceSealed swaps a lease's sealed revocation data (re-encryption
	// under a newer barrier key) if it still equals old; ErrConflict
	// otherwise.
	ReplaceSealed(ctx context.Context, id string, old, new []byte) error
	Get(ctx context.Context, id string) (*Lease, error)
	// List returns leases ordered by ID (Limit defaults to 100, at most
	// 1000) and the cursor for the next page ("" at the end). Prefix matches
	// IDs byte-wise; it is not a pattern.
	List(ctx context.Context, f LeaseFilter) ([]*Lease, string, error)
	// Extend moves an active lease's expiry from from (the expiry the
	// caller read) to to; ErrNotFound if absent, ErrConflict if no longer
	// active, claimed, or its expiry is no longer from (a revocation began,
	// or another renewal won: this one must not be reported as granted).
	// Capping at MaxExpiresAt is the caller's job.
	Extend(ctx context.Context, id string, from, to time.Time) error
	// Activate makes a pending lease active with a new expiry; ErrNotFound
	// if absent, ErrConflict if it is not pending or is claimed (the expiry
	// worker is revoking it).
	Activate(ctx context.Context, id string, expiresAt time.Time) error
	// StartRevoke records that a revocation by request begins: an open
	// lease ends at now (if later) and is claimed until claimUntil, so the
	// expiry worker leaves it alone meanwhile and revokes it once the claim
	// lapses (or ReleaseClaims drops it) if the requester dies. ErrConflict
	// if the lease is not open or another claim holds it.
	StartRevoke(ctx context.Context, id string, now, claimUntil time.Time) error
	// ClaimDue claims up to limit open (pending or active) leases whose
	// ExpiresAt and NextAttemptAt are <= now and whose claim has lapsed,
	// marking them claimed until claimUntil (FOR UPDATE SKIP LOCKED on
	// PostgreSQL). Due pending leases come first (they are few, and may
	// hold a secret nobody received), then active ones; within each state
	// the earliest due comes first (due: the later of ExpiresAt,
	// NextAttemptAt and a lapsed claim's end), ties by ID. Concurrent
	// callers never get the same lease while its claim holds.
	ClaimDue(ctx context.Context, now, claimUntil time.Time, limit int) ([]*Lease, error)
	// ReleaseClaims drops every claim and returns how many it dropped. Only
	// a node that knows it is alone (an embedded database behind the data
	// directory lock) may call it: claims of a crashed run would otherwise
	// delay those leases' revocation until the claims lapse.
	ReleaseClaims(ctx context.Context) (int, error)
	// SetState records the outcome of a revocation attempt and releases the
	// claim, so a lease left active is due again at nextAttempt;
	// ErrNotFound if absent, ErrConflict if it would reopen a closed lease
	// or mark a revoked one irrevocable (an outcome written meanwhile).
	SetState(ctx context.Context, id string, st LeaseState, attempts int, nextAttempt time.Time, lastErr string) error
	// SetStates records many outcomes in one transaction, each as SetState
	// would, and reports which were recorded: an absent lease, or one that
	// no longer holds the outcome's Claim, is skipped without error.
	SetStates(ctx context.Context, outcomes []LeaseOutcome) ([]bool, error)
	// PruneRevoked deletes up to limit revoked leases closed (revoked) at
	// or before cutoff and returns how many it deleted. Irrevocable leases
	// are kept.
	PruneRevoked(ctx context.Context, cutoff time.Time, limit int) (int, error)
	// CountActive counts open (active or pending) leases under prefix.
	CountActive(ctx context.Context, prefix string) (int, error)
}

// LeaseOutcome is the result of one revocation attempt, for SetStates.
type LeaseOutcome struct {
	ID          string
	State       LeaseState
	Attempts    int
	NextAttempt time.Time // an active lease is due again then (zero: at its expiry)
	LastError   string
	// Claim, when non-zero, is the ClaimedUntil the attempt was made under:
	// the outcome is recorded only while the lease still holds that claim,
	// so a worker whose claim lapsed and was taken over, or whose lease was
	// revoked by request meanwhile, changes nothing.
	Claim time.Time
}

// Settings is a small typed-by-key table for singleton records (for example
// the hash key for tokens, or the CA initialisation marker). Values that are
// secret must arrive sealed.
type Settings interface {
	Get(ctx context.Context, key string) ([]byte, error) // ErrNotFound
	// PutIfAbsent stores value unless key exists; ErrConflict if it does.
	PutIfAbsent(ctx context.Context, key string, value []byte) error
	Put(ctx context.Context, key string, value []byte) error
	// Replace swaps a value if it still equals old; ErrConflict otherwise,
	// ErrNotFound if the key is absent.
	Replace(ctx context.Context, key string, old, new []byte) error
	// Delete removes key; ErrNotFound if absent.
	Delete(ctx context.Context, key string) error
	// List returns the keys that start with prefix, sorted (keys only:
	// values may be large and are read one at a time).
	List(ctx context.Context, prefix string) ([]string, error)
}

// Policies stores access-policy documents (YAML, not secret) by name. The
// policy package parses them; storage keeps the bytes verbatim.
type Policies interface {
	// Put inserts the document or replaces the stored one.
	Put(ctx context.Context, name string, document []byte) error
	Get(ctx context.Context, name string) ([]byte, error) // ErrNotFound
	// List returns every document by name.
	List(ctx context.Context) (map[string][]byte, error)
	Delete(ctx context.Context, name string) error // ErrNotFound if absent
}

// AuditRecord is one link of the audit hash chain as stored. Record is the
// audit package's canonical encoding; storage does not interpret it.
type AuditRecord struct {
	Seq      int64 // 1, 2, 3, … without gaps
	Time     time.Time
	PrevHash []byte // the previous record's Hash; empty for Seq 1
	Hash     []byte
	Record   []byte
}

// AuditLog is the append-only, hash-chained audit log. Appends are
// serialised across every node sharing the database: the head row is locked
// from the moment a writer reads it until its record commits.
type AuditLog interface {
	// Append reads the head (prevSeq 0 and an empty prevHash for an empty
	// log), calls build with it while holding the head, and stores the
	// record build returns, which must carry Seq prevSeq+1 and PrevHash
	// prevHash (ErrConflict otherwise). build runs inside the write
	// transaction: it must be quick and must not use storage. An error from
	// build aborts the append and is returned as is.
	Append(ctx context.Context, build func(prevSeq int64, prevHash []byte) (*AuditRecord, error)) error
	// AppendBatch appends one record per build, in order, as if by
	// consecutive Appends in one transaction (build i+1 is called with the
	// record build i returned as its head), but reads and moves the head
	// only once. An error stores none of them when it runs in its own
	// transaction; inside the caller's, the caller must roll back, as
	// after a failed Append.
	AppendBatch(ctx context.Context, builds []func(prevSeq int64, prevHash []byte) (*AuditRecord, error)) error
	// List returns records with Seq > afterSeq in order; limit defaults to
	// 100, at most 1000.
	List(ctx context.Context, afterSeq int64, limit int) ([]*AuditRecord, error)
	// Head returns the last record's Seq and Hash (0 and empty when empty).
	Head(ctx context.Context) (seq int64, hash []byte, err error)
}

// ACMEObject is one ACME protocol object (an account, order, authorization,
// issued-certificate record or EAB key) as the acme package encodes it.
// Storage interprets only the indexed columns; Data is opaque, and secrets
// inside it (EAB HMAC keys) are sealed by the acme package before Put.
type ACMEObject struct {
	Kind        string // "account", "order", "authz", "cert", "eab", …
	ID          string // unique within Kind
	Provisioner string
	AccountID   string // the owning account; empty for accounts and EAB keys
	// LookupKey, when not empty, is unique per (Kind, Provisioner): an
	// account key's thumbprint. Empty keys are not indexed.
	LookupKey string
	// Ref is a non-unique secondary key (an authorization's identifier).
	Ref       string
	Status    string
	ExpiresAt time.Time // zero: never expires
	Version   int64     // optimistic concurrency: 1 after Put, +1 per Update
	Data      []byte
	CreatedAt time.Time
}

// ACMEFilter selects ACME objects for List. Zero fields do not filter,
// except Kind, which is required.
type ACMEFilter struct {
	Kind        string
	Provisioner string
	AccountID   string
	Ref         string
	Status      string
	After       string // pagination cursor: ID to start after
	Limit       int    // default 100, at most 1000
}

// ACME stores the ACME server's objects and its anti-replay nonces, shared
// by every node using the database.
type ACME interface {
	// Put stores a new object and sets its Version to 1 (and a zero
	// CreatedAt to now). ErrConflict if (Kind, ID) exists or a non-empty
	// LookupKey is taken within (Kind, Provisioner).
	Put(ctx context.Context, o *ACMEObject) error
	Get(ctx context.Context, kind, id string) (*ACMEObject, error) // ErrNotFound
	// GetByLookupKey finds an object by its unique lookup key; ErrNotFound.
	GetByLookupKey(ctx context.Context, kind, provisioner, key string) (*ACMEObject, error)
	// Update replaces LookupKey, Ref, Status, ExpiresAt and Data if the
	// stored Version still equals o.Version, then increments o.Version.
	// ErrNotFound if absent; ErrConflict if the version moved on or the
	// new LookupKey is taken.
	Update(ctx context.Context, o *ACMEObject) error
	// List returns matching objects ordered by ID.
	List(ctx context.Context, f ACMEFilter) ([]*ACMEObject, error)
	// CountUnexpired counts the objects matching f (After and Limit aside)
	// that expire after now, and returns the earliest of their expiries
	// (zero when there are none).
	CountUnexpired(ctx context.Context, f ACMEFilter, now time.Time) (n int, first time.Time, err error)
	// PruneExpired deletes at most limit objects of kind whose ExpiresAt is
	// set and before cutoff, returning how many it deleted.
	PruneExpired(ctx context.Context, kind string, cutoff time.Time, limit int) (int, error)
	// PutNonce records a used nonce until expiresAt; ErrConflict if it is
	// already recorded. Exactly one of concurrent recorders succeeds.
	PutNonce(ctx context.Context, nonce string, expiresAt time.Time) error
	// PruneNonces deletes at most limit nonces that expired before cutoff.
	PruneNonces(ctx context.Context, cutoff time.Time, limit int) (int, error)
}

// KVMeta is the metadata row of one key-value secret (a path in a kv
// mount). CurrentVersion is the compare-and-set anchor of every write.
type KVMeta struct {
	Mount              string
	Path               string
	CurrentVersion     int // 0: no version written yet
	MaxVersions        int // 0: the mount's default
	CASRequired        bool
	DeleteVersionAfter time.Duration // 0: never
	// SealedCustom is the custom metadata, sealed by the caller; empty
	// when there is none.
	SealedCustom []byte
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// KVVersion is one version of a key-value secret.
type KVVersion struct {
	Mount   string
	Path    string
	Version int
	// Sealed is the value sealed by the caller; nil once destroyed.
	Sealed    []byte
	CreatedAt time.Time
	DeletedAt time.Time // zero: not soft-deleted
	Destroyed bool
}

// KVRead is what KV.Read saw of one secret, all as of one snapshot.
type KVRead struct {
	Mount   *Mount     // the mount's row; nil when there is no such mount
	Meta    *KVMeta    // nil when the path has no metadata
	Version *KVVersion // the version asked for; nil when absent
}

// KVFilter selects paths for KV.List.
type KVFilter struct {
	Mount  string
	Prefix string // byte-wise prefix of the path, not a pattern
	After  string // pagination cursor: list paths greater than this
	Limit  int    // default 100, at most 1000
}

// KV stores the versions and metadata of key-value secrets. Values are
// sealed above storage; destroying a version removes its ciphertext.
type KV interface {
	// GetMeta returns a path's metadata; ErrNotFound if absent.
	GetMeta(ctx context.Context, mount, path string) (*KVMeta, error)
	// PutMeta inserts the metadata or replaces its settings (MaxVersions,
	// CASRequired, DeleteVersionAfter, SealedCustom, UpdatedAt), keeping
	// CurrentVersion and CreatedAt. A zero CreatedAt or UpdatedAt is now.
	PutMeta(ctx context.Context, m *KVMeta) error
	// WriteVersion stores v as the path's new current version in one
	// transaction, only if the current version still equals
	// v.Version-1 (creating the metadata row when v.Version is 1 and
	// none exists): ErrConflict otherwise, so two writers that read the
	// same current version never both succeed. Versions at or below
	// v.Version-keep are then deleted (keep > 0). A zero CreatedAt is now.
	WriteVersion(ctx context.Context, v *KVVersion, keep int) error
	// GetVersion returns one version; ErrNotFound if absent (never
	// written or pruned).
	GetVersion(ctx context.Context, mount, path string, version int) (*KVVersion, error)
	// Read returns, from one snapshot in one query, the mount's row, the
	// path's metadata and its version (0: the current one); each is nil
	// when absent (never an ErrNotFound).
	Read(ctx context.Context, mount, path string, version int) (*KVRead, error)
	// ListVersions returns the path's stored versions by version number.
	ListVersions(ctx context.Context, mount, path string) ([]*KVVersion, error)
	// SetDeleted soft-deletes the given versions at at, or undeletes them
	// when at is zero; destroyed and absent versions are skipped. It
	// returns how many versions changed.
	SetDeleted(ctx context.Context, mount, path string, versions []int, at time.Time) (int, error)
	// Destroy removes the ciphertext of the given versions and marks them
	// destroyed; absent versions are skipped. It returns how many changed.
	Destroy(ctx context.Context, mount, path string, versions []int) (int, error)
	// DeleteAll removes the path's metadata and every version;
	// ErrNotFound if the path has no metadata.
	DeleteAll(ctx context.Context, mount, path string) error
	// DeleteMount removes every path of a mount.
	DeleteMount(ctx context.Context, mount string) error
	// List returns the mount's paths with metadata under the prefix,
	// ordered byte-wise, and the cursor of the next page ("" at the end).
	List(ctx context.Context, f KVFilter) ([]string, string, error)
	// ReplaceSealed swaps a version's ciphertext (re-encryption under a
	// newer barrier key) if it still equals old; ErrConflict otherwise,
	// ErrNotFound if the version is absent.
	ReplaceSealed(ctx context.Context, mount, path string, version int, old, new []byte) error
	// ReplaceCustom is ReplaceSealed for the sealed custom metadata.
	ReplaceCustom(ctx context.Context, mount, path string, old, new []byte) error
	// EachSealed visits every stored ciphertext (versions not destroyed,
	// then non-empty custom metadata) in pages, for rewrapping; version
	// is 0 for custom metadata.
	EachSealed(ctx context.Context, visit func(mount, path string, version int, sealed []byte) error) error
}
