package wfe

import (
	"container/heap"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sigil-ca/sigil/issuer/acme/ra"
	"github.com/sigil-ca/sigil/storage"
)

// Nonces are stateless until used: a nonce is
//
//	version(1) ‖ expiry, Unix seconds (8) ‖ id (12) ‖ HMAC-SHA-256(key, label ‖ the above)[:16]
//
// base64url. Handing one out costs no storage; using one records it as
// used until its expiry (the bounded replay window). Where the key lives
// and how uses are recorded is the nonce book's:
//
//   - storedNonces (version 1), for nodes sharing a database: the key is
//     kept in storage sealed by the barrier, so every node mints and
//     accepts the same nonces and a restart does not invalidate them; the
//     id is random, and a use is an insert into the nonce table, unique on
//     the nonce, which makes it single use across nodes and restarts;
//     Prune deletes the records once they expire.
//   - localNonces (version 2), for a server alone on its database (the
//     embedded store, whose data directory is locked): the key is made at
//     start and never stored, so only this process accepts its nonces and
//     a restart invalidates them all (clients retry on badNonce, RFC 8555
//     §6.5); the id is a strictly increasing mint time in nanoseconds
//     (which tells a client nothing the expiry does not, unlike a counter
//     of nonces minted), and uses are remembered in memory, at
//     most UsedNonceLimit of them: when the limit is passed the oldest
//     nonce used is forgotten and every nonce up to it refused, as
//     Boulder's nonce service does. A POST then costs no write.
const (
	nonceStoredVersion = 1
	nonceLocalVersion  = 2
	nonceIDLen         = 12
	nonceMACLen        = 16
	nonceLen           = 1 + 8 + nonceIDLen + nonceMACLen
	nonceMACLabel      = "sigil acme nonce v1\x00"
	kindNonceKey       = "noncekey"
	nonceKeyID         = "hmac-v1"
	sealKindNonces     = "acme-nonce-key"
)

// DefaultUsedNonceLimit is how many used nonces local nonces remember
// (about 6 MiB of memory, measured).
const DefaultUsedNonceLimit = 1 << 17

// errBadNonce is a nonce that is malformed, forged, expired or used.
var errBadNonce = errors.New("nonce is unknown, used or expired")

// nonceBook is where nonces' key comes from and where their use is
// recorded.
type nonceBook interface {
	version() byte
	key(ctx context.Context) ([]byte, error)
	// newID fills a new nonce's id.
	newID(id []byte) error
	// record marks an authentic, unexpired nonce used; errBadNonce if it
	// already was (or can no longer be told apart from one that was).
	record(ctx context.Context, nonce string, id []byte, exp time.Time) error
}

func nonceMAC(key, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(nonceMACLabel))
	m.Write(body)
	return m.Sum(nil)[:nonceMACLen]
}

// makeNonce mints a nonce valid for NonceLifetime.
func (f *WFE) makeNonce(ctx context.Context) (string, error) {
	key, err := f.nonces.key(ctx)
	if err != nil {
		return "", err
	}
	b := make([]byte, nonceLen)
	b[0] = f.nonces.version()
	binary.BigEndian.PutUint64(b[1:9], uint64(f.now().Add(f.cfg.NonceLifetime).Unix()))
	if err := f.nonces.newID(b[9 : 9+nonceIDLen]); err != nil {
		return "", fmt.Errorf("acme: nonce: %w", err)
	}
	copy(b[9+nonceIDLen:], nonceMAC(key, b[:9+nonceIDLen]))
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// useNonce checks a nonce and records it as used; errBadNonce if it is
// malformed, forged, expired or already used (on any node).
func (f *WFE) useNonce(ctx context.Context, nonce string) error {
	b, err := base64.RawURLEncoding.DecodeString(nonce)
	if err != nil || len(b) != nonceLen || b[0] != f.nonces.version() {
		return errBadNonce
	}
	key, err := f.nonces.key(ctx)
	if err != nil {
		return err
	}
	if !hmac.Equal(b[9+nonceIDLen:], nonceMAC(key, b[:9+nonceIDLen])) {
		return errBadNonce
	}
	exp := time.Unix(int64(binary.BigEndian.Uint64(b[1:9])), 0).UTC()
	now := f.cfg.Now()
	// The upper bound keeps the replay window at most NonceLifetime even
	// for nonces minted under a longer configured lifetime.
	if !now.Before(exp) || exp.After(now.Add(f.cfg.NonceLifetime+time.Minute)) {
		return errBadNonce
	}
	return f.nonces.record(ctx, nonce, b[9:9+nonceIDLen], exp)
}

// storedNonces keep the key in storage and record uses there.
type storedNonces struct {
	store  Store
	sealer ra.Sealer
	now    func() time.Time

	mu sync.Mutex
	k  []byte // loaded (or created) on first use
}

func (*storedNonces) version() byte { return nonceStoredVersion }

func (*storedNonces) newID(id []byte) error {
	_, err := rand.Read(id)
	return err
}

func (s *storedNonces) record(ctx context.Context, nonce string, _ []byte, exp time.Time) error {
	if err := s.store.ACME().PutNonce(ctx, nonce, exp); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return errBadNonce
		}
		return fmt.Errorf("acme: recording used nonce: %w", err)
	}
	return nil
}

// nonceKeyRecord is the stored key, sealed with (sealKindNonces, id).
type nonceKeyRecord struct {
	Sealed    []byte    `json:"sealed"`
	CreatedAt time.Time `json:"createdAt"`
}

// key returns the HMAC key, loading it from storage or, on first use of
// the database, creating it. Of nodes racing to create it the first Put
// wins and the others load that one.
func (s *storedNonces) key(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.k != nil {
		return s.k, nil
	}
	for range 3 {
		o, err := s.store.ACME().Get(ctx, kindNonceKey, nonceKeyID)
		if err == nil {
			var rec nonceKeyRecord
			if err := json.Unmarshal(o.Data, &rec); err != nil {
				return nil, fmt.Errorf("acme: decoding the nonce key: %w", err)
			}
			key, err := s.sealer.Open(ctx, sealKindNonces, nonceKeyID, rec.Sealed)
			if err != nil {
				return nil, fmt.Errorf("acme: opening the nonce key: %w", err)
			}
			s.k = key
			return key, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return nil, fmt.Errorf("acme: loading the nonce key: %w", err)
		}
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("acme: nonce key: %w", err)
		}
		sealed, err := s.sealer.Seal(ctx, sealKindNonces, nonceKeyID, key)
		if err != nil {
			return nil, fmt.Errorf("acme: sealing the nonce key: %w", err)
		}
		data, err := json.Marshal(&nonceKeyRecord{Sealed: sealed, CreatedAt: s.now()})
		if err != nil {
			return nil, fmt.Errorf("acme: encoding the nonce key: %w", err)
		}
		err = s.store.ACME().Put(ctx, &storage.ACMEObject{Kind: kindNonceKey, ID: nonceKeyID, Status: ra.StatusValid, Data: data})
		if errors.Is(err, storage.ErrConflict) {
			continue // another node created it first: load theirs
		}
		if err != nil {
			return nil, fmt.Errorf("acme: storing the nonce key: %w", err)
		}
		s.k = key
		return key, nil
	}
	return nil, fmt.Errorf("acme: nonce key: %w", storage.ErrConflict)
}

// localNonces keep the key and the used nonces in this process.
type localNonces struct {
	k     []byte
	limit int

	now func() time.Time

	mu       sync.Mutex
	last     uint64              // the last id handed out
	earliest uint64              // ids up to this are refused
	used     map[uint64]struct{} // used ids above earliest
	order    idHeap              // the same ids, oldest first
}

func newLocalNonces(limit int, now func() time.Time) (*localNonces, error) {
	if limit <= 0 {
		limit = DefaultUsedNonceLimit
	}
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("acme: nonce key: %w", err)
	}
	return &localNonces{k: k, limit: limit, now: now, used: make(map[uint64]struct{})}, nil
}

func (*localNonces) version() byte { return nonceLocalVersion }

func (l *localNonces) key(context.Context) ([]byte, error) { return l.k, nil }

// newID is the mint time in nanoseconds, made strictly increasing (also
// when the clock steps back), then 4 random bytes.
func (l *localNonces) newID(id []byte) error {
	t := uint64(l.now().UnixNano())
	l.mu.Lock()
	l.last = max(t, l.last+1)
	n := l.last
	l.mu.Unlock()
	binary.BigEndian.PutUint64(id[:8], n)
	_, err := rand.Read(id[8:])
	return err
}

func (l *localNonces) record(ctx context.Context, _ string, id []byte, _ time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n := binary.BigEndian.Uint64(id[:8])
	l.mu.Lock()
	defer l.mu.Unlock()
	if n <= l.earliest {
		return errBadNonce
	}
	if _, ok := l.used[n]; ok {
		return errBadNonce
	}
	l.used[n] = struct{}{}
	heap.Push(&l.order, n)
	for len(l.used) > l.limit {
		oldest := heap.Pop(&l.order).(uint64)
		delete(l.used, oldest)
		l.earliest = oldest
	}
	return nil
}

// idHeap is a min-heap of ids (container/heap).
type idHeap []uint64

func (h idHeap) Len() int           { return len(h) }
func (h idHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h idHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *idHeap) Push(x any)        { *h = append(*h, x.(uint64)) }
func (h *idHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
