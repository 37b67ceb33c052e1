package authmethod

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/storage"
)

// PendingStore holds started, unfinished logins (an OIDC browser login's
// state, nonce and PKCE verifier) until their callback takes them, once.
// The Manager's is in storage, sealed by the barrier, so any node can
// finish a login another node started.
type PendingStore interface {
	// Put stores data under key until expires.
	Put(ctx context.Context, key string, data []byte, expires time.Time) error
	// Take returns key's data and removes it: a key works once. A missing,
	// already taken or expired key is ErrPendingNotFound.
	Take(ctx context.Context, key string) ([]byte, error)
}

// PendingUser is a Method that keeps started logins; the Manager hands it
// the shared store after building it.
type PendingUser interface {
	UsePending(PendingStore)
}

// ErrPendingNotFound: no such started login (never started, already
// finished, or expired).
var ErrPendingNotFound = errors.New("no such login in progress")

// pendingPrefix is the settings key prefix of started logins.
const pendingPrefix = "authmethod.pending/"

// PendingSealKind is the barrier kind of a sealed started login; the id is
// its setting key.
const PendingSealKind = "authmethod-pending"

// PendingRewrapper lists sealed started logins, for the barrier's rewrap
// registry (a login started just before a rewrap still finishes after it).
func PendingRewrapper(s storage.Settings) storage.SealedSettings {
	return storage.SealedSettings{Settings: s, Prefix: pendingPrefix}
}

// pendingSweepAt is how many started logins of a mount may accumulate
// before a Put sweeps out the expired ones (abandoned browser logins).
const pendingSweepAt = 256

// pendingMax bounds unexpired started logins per mount.
const pendingMax = 10_000

type settingsPending struct {
	settings storage.Settings
	sealer   Sealer
	mount    string
	now      func() time.Time
}

type pendingRecord struct {
	Expires time.Time `json:"expires"`
	Data    []byte    `json:"data"`
}

// storageKey names key's record. The key (an OIDC state) is hashed: the
// setting's name, which is not sealed, must not be a usable state.
func (p settingsPending) storageKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return pendingPrefix + p.mount + "/" + hex.EncodeToString(sum[:])
}

func (p settingsPending) Put(ctx context.Context, key string, data []byte, expires time.Time) error {
	if err := p.sweep(ctx); err != nil {
		return err
	}
	raw, err := json.Marshal(pendingRecord{Expires: expires.UTC(), Data: data})
	if err != nil {
		return internal("encode started login", err)
	}
	sk := p.storageKey(key)
	sealed, err := p.sealer.Seal(ctx, PendingSealKind, sk, raw)
	clear(raw)
	if err != nil {
		return internal("seal started login", err)
	}
	if err := p.settings.PutIfAbsent(ctx, sk, sealed); err != nil {
		return internal("store started login", err)
	}
	return nil
}

// Take reads the record, then deletes it: of two callbacks racing with
// the same state, on any nodes, only the one whose delete removed the row
// proceeds.
func (p settingsPending) Take(ctx context.Context, key string) ([]byte, error) {
	sk := p.storageKey(key)
	sealed, err := p.settings.Get(ctx, sk)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ErrPendingNotFound
	}
	if err != nil {
		return nil, internal("load started login", err)
	}
	if err := p.settings.Delete(ctx, sk); errors.Is(err, storage.ErrNotFound) {
		return nil, ErrPendingNotFound
	} else if err != nil {
		return nil, internal("take started login", err)
	}
	raw, err := p.sealer.Open(ctx, PendingSealKind, sk, sealed)
	if err != nil {
		return nil, internal("open started login", err)
	}
	defer clear(raw)
	var rec pendingRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, internal("decode started login", err)
	}
	if !p.now().Before(rec.Expires) {
		return nil, ErrPendingNotFound
	}
	return rec.Data, nil
}

// sweep deletes the mount's expired started logins once enough have
// accumulated, and refuses a new one past pendingMax.
func (p settingsPending) sweep(ctx context.Context) error {
	keys, err := p.settings.List(ctx, pendingPrefix+p.mount+"/")
	if err != nil {
		return internal("list started logins", err)
	}
	if len(keys) < pendingSweepAt {
		return nil
	}
	live := 0
	for _, k := range keys {
		if !strings.HasPrefix(k, pendingPrefix+p.mount+"/") {
			continue
		}
		sealed, err := p.settings.Get(ctx, k)
		if err != nil {
			continue // taken meanwhile
		}
		raw, err := p.sealer.Open(ctx, PendingSealKind, k, sealed)
		var rec pendingRecord
		if err == nil {
			err = json.Unmarshal(raw, &rec)
			clear(raw)
		}
		if err != nil || !p.now().Before(rec.Expires) {
			if derr := p.settings.Delete(ctx, k); derr != nil && !errors.Is(derr, storage.ErrNotFound) {
				return internal("delete expired started login", derr)
			}
			continue
		}
		live++
	}
	if live >= pendingMax {
		return errs.New(errs.ResourceExhausted, "too many browser logins in progress: retry in a few minutes")
	}
	return nil
}

// NewSettingsPending returns mount's started-login store in settings,
// sealed by sealer (exported for tests; the Manager makes its own).
func NewSettingsPending(settings storage.Settings, sealer Sealer, mount string, now func() time.Time) PendingStore {
	if now == nil {
		now = time.Now
	}
	return settingsPending{settings: settings, sealer: sealer, mount: mount, now: now}
}
