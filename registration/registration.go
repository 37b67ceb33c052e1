// Package registration keeps the registration entries of node agents: each
// entry names a workload SPIFFE ID, the node (parent) whose agent may
// obtain SVIDs for it, and the selectors a local process must match. It
// also signs JWT-SVIDs with a key held in custody.
//
// Entries are not secret; they live in storage's settings table (both
// backends) under entryPrefix, keyed by parent so an agent's entries are
// one prefix scan.
package registration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-ca/sigil/storage"
)

// Errors callers branch on.
var (
	// ErrInvalid: a malformed entry or selector; the message says what.
	ErrInvalid = errors.New("invalid registration entry")
	// ErrNotFound: no entry with that id.
	ErrNotFound = errors.New("registration entry not found")
)

// entryPrefix is where entries live in the settings table:
// entryPrefix + escaped parent + "/" + id.
const entryPrefix = "agent/entries/"

// MaxSelectors bounds an entry's selectors.
const MaxSelectors = 16

// Entry is one registration entry.
type Entry struct {
	ID        string        `json:"id"`
	ParentID  string        `json:"parent_id"`
	SPIFFEID  string        `json:"spiffe_id"`
	Selectors []string      `json:"selectors"`
	TTL       time.Duration `json:"ttl"`
	CreatedAt time.Time     `json:"created_at"`
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// ParseSelector checks one selector: unix:uid:N, unix:gid:N,
// unix:path:/ABSOLUTE, unix:sha256:64-HEX.
func ParseSelector(s string) (kind, value string, err error) {
	rest, ok := strings.CutPrefix(s, "unix:")
	if !ok {
		return "", "", invalid("selector %q: only unix:uid|gid|path|sha256 selectors exist", s)
	}
	kind, value, ok = strings.Cut(rest, ":")
	if !ok || value == "" {
		return "", "", invalid("selector %q: want unix:KIND:VALUE", s)
	}
	switch kind {
	case "uid", "gid":
		if n, err := strconv.ParseUint(value, 10, 32); err != nil || strconv.FormatUint(n, 10) != value {
			return "", "", invalid("selector %q: %s must be a decimal number", s, kind)
		}
	case "path":
		if !strings.HasPrefix(value, "/") || strings.Contains(value, "\x00") {
			return "", "", invalid("selector %q: path must be absolute", s)
		}
	case "sha256":
		if b, err := hex.DecodeString(value); err != nil || len(b) != 32 || strings.ToLower(value) != value {
			return "", "", invalid("selector %q: sha256 must be 64 lowercase hex digits", s)
		}
	default:
		return "", "", invalid("selector %q: unknown kind %q (uid, gid, path, sha256)", s, kind)
	}
	return kind, value, nil
}

// Validate checks an entry before it is stored. An entry needs a uid or a
// sha256 selector: one with only a gid or a path would match processes of
// any user.
func (e *Entry) Validate(trustDomain string) error {
	parent, err := spiffeid.FromString(e.ParentID)
	if err != nil {
		return invalid("parent_id %q: must be a SPIFFE ID: %v", e.ParentID, err)
	}
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		return invalid("spiffe_id %q: must be a SPIFFE ID: %v", e.SPIFFEID, err)
	}
	if trustDomain != "" && (parent.TrustDomain().Name() != trustDomain || id.TrustDomain().Name() != trustDomain) {
		return invalid("parent_id and spiffe_id must be in trust domain %s", trustDomain)
	}
	if parent == id {
		return invalid("spiffe_id must differ from parent_id (the node's own identity)")
	}
	if len(e.Selectors) == 0 || len(e.Selectors) > MaxSelectors {
		return invalid("an entry needs 1 to %d selectors (--selector)", MaxSelectors)
	}
	anchored := false
	for _, s := range e.Selectors {
		kind, _, err := ParseSelector(s)
		if err != nil {
			return err
		}
		anchored = anchored || kind == "uid" || kind == "sha256"
	}
	if !anchored {
		return invalid("an entry needs a unix:uid or unix:sha256 selector, or any user's process would match")
	}
	if e.TTL < 0 {
		return invalid("ttl must not be negative")
	}
	return nil
}

// Store keeps entries in storage.
type Store struct {
	settings    storage.Settings
	trustDomain string
}

// NewStore returns a store over settings for trustDomain ("" accepts any).
func NewStore(settings storage.Settings, trustDomain string) *Store {
	return &Store{settings: settings, trustDomain: trustDomain}
}

func parentPrefix(parent string) string { return entryPrefix + url.PathEscape(parent) + "/" }

func newID() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("registration: entry id: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// ValidID checks an entry id's form (it is part of a storage key).
func ValidID(id string) error {
	if b, err := hex.DecodeString(id); err != nil || len(b) != 12 {
		return invalid("entry id %q: want 24 hex digits (sigil agent entry list)", id)
	}
	return nil
}

// Create validates and stores e, filling its ID and CreatedAt.
func (s *Store) Create(ctx context.Context, e *Entry) error {
	e.Selectors = slices.Compact(slices.Sorted(slices.Values(e.Selectors)))
	if err := e.Validate(s.trustDomain); err != nil {
		return err
	}
	id, err := newID()
	if err != nil {
		return err
	}
	e.ID, e.CreatedAt = id, time.Now().UTC().Truncate(time.Second)
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("registration: encode entry: %w", err)
	}
	if err := s.settings.PutIfAbsent(ctx, parentPrefix(e.ParentID)+e.ID, b); err != nil {
		return fmt.Errorf("registration: store entry: %w", err)
	}
	return nil
}

// List returns entries, of one parent when parent is set, sorted by
// SPIFFE ID then id.
func (s *Store) List(ctx context.Context, parent string) ([]*Entry, error) {
	prefix := entryPrefix
	if parent != "" {
		prefix = parentPrefix(parent)
	}
	keys, err := s.settings.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("registration: list entries: %w", err)
	}
	out := make([]*Entry, 0, len(keys))
	for _, k := range keys {
		e, err := s.load(ctx, k)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *Entry) int {
		if c := strings.Compare(a.SPIFFEID, b.SPIFFEID); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

func (s *Store) load(ctx context.Context, key string) (*Entry, error) {
	b, err := s.settings.Get(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("registration: read entry: %w", err)
	}
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("registration: decode entry %s: %w", key, err)
	}
	return &e, nil
}

// Get returns the entry with id, whatever its parent.
func (s *Store) Get(ctx context.Context, id string) (*Entry, error) {
	if err := ValidID(id); err != nil {
		return nil, err
	}
	keys, err := s.settings.List(ctx, entryPrefix)
	if err != nil {
		return nil, fmt.Errorf("registration: list entries: %w", err)
	}
	for _, k := range keys {
		if strings.HasSuffix(k, "/"+id) {
			return s.load(ctx, k)
		}
	}
	return nil, ErrNotFound
}

// GetForParent returns entry id only if it is parented to parent: the
// node-scoped lookup an agent's requests go through. Another node's entry
// is ErrNotFound, as if it did not exist.
func (s *Store) GetForParent(ctx context.Context, parent, id string) (*Entry, error) {
	if err := ValidID(id); err != nil {
		return nil, err
	}
	e, err := s.load(ctx, parentPrefix(parent)+id)
	if err != nil {
		return nil, err
	}
	if e.ParentID != parent || e.ID != id {
		return nil, ErrNotFound // the key and the record must agree
	}
	return e, nil
}

// Delete removes entry e (as returned by Get).
func (s *Store) Delete(ctx context.Context, e *Entry) error {
	err := s.settings.Delete(ctx, parentPrefix(e.ParentID)+e.ID)
	if errors.Is(err, storage.ErrNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("registration: delete entry: %w", err)
	}
	return nil
}
