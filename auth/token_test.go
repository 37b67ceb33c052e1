package auth_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/internal/pausepoint"
	"github.com/sigil-ca/sigil/storage"
)

func newTokens(t *testing.T) (*auth.Tokens, storage.Store) {
	t.Helper()
	st, b := barriertest.New(t)
	return auth.NewTokens(st, b), st
}

func TestTokens(t *testing.T) {
	ctx := context.Background()
	tokens, st := newTokens(t)
	root, err := tokens.EnsureRoot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	limited, _, err := tokens.Create(ctx, auth.CreateOptions{Policies: []string{"p"}, Uses: 2})
	if err != nil {
		t.Fatal(err)
	}
	short, _, err := tokens.Create(ctx, auth.CreateOptions{Policies: []string{"p"}, TTL: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond)
	tests := []struct {
		name     string
		token    string
		wantErr  bool
		wantRoot bool
	}{
		{"root", root, false, true},
		{"limited use 1", limited, false, false},
		{"limited use 2", limited, false, false},
		{"limited exhausted", limited, true, false},
		{"expired", short, true, false},
		{"unknown", auth.TokenPrefix + strings.Repeat("A", 43), true, false},
		{"no prefix", "hunter2", true, false},
		{"too long", auth.TokenPrefix + strings.Repeat("A", 1000), true, false},
		{"empty", "", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := tokens.Verify(ctx, tt.token)
			if tt.wantErr {
				if !errors.Is(err, auth.ErrInvalidToken) {
					t.Fatalf("err = %v, want ErrInvalidToken", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.IsRoot() != tt.wantRoot {
				t.Errorf("IsRoot = %v", id.IsRoot())
			}
		})
	}

	// Only a keyed hash is stored: the token's bytes appear nowhere.
	rec, err := st.Tokens().Get(ctx, auth.RootTokenID)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(rec.Hash, []byte(root)) || len(rec.Hash) != 32 {
		t.Fatalf("stored hash looks wrong: %x", rec.Hash)
	}
	key, err := st.Settings().Get(ctx, "auth.token_hmac_key")
	if err != nil || len(key) <= 32 {
		t.Fatalf("HMAC key setting is not sealed: %d bytes, %v", len(key), err)
	}

	// EnsureRoot keeps a valid saved token and refuses a foreign one.
	if got, err := tokens.EnsureRoot(ctx, root); err != nil || got != root {
		t.Fatalf("EnsureRoot(saved) = %q, %v", got, err)
	}
	if _, err := tokens.EnsureRoot(ctx, limited); err == nil {
		t.Fatal("EnsureRoot accepted a non-root token")
	}
	// A new root token replaces the old one.
	root2, err := tokens.EnsureRoot(ctx, "")
	if err != nil || root2 == root {
		t.Fatalf("new root: %v", err)
	}
	if _, err := tokens.Verify(ctx, root); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatal("the replaced root token still verifies")
	}
}

func TestVerificationCache(t *testing.T) {
	ctx := context.Background()
	tokens, st := newTokens(t)
	now := time.Now()
	auth.SetClock(tokens, func() time.Time { return now })

	unlimited, rec, err := tokens.Create(ctx, auth.CreateOptions{Policies: []string{"p"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Verify(ctx, unlimited); err != nil {
		t.Fatal(err)
	}
	// Deleted through Tokens (a revoke on this node): refused at once.
	if err := tokens.Delete(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Verify(ctx, unlimited); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("deleted token verified from the cache: %v", err)
	}

	// Deleted behind this node's back (another node on a shared store):
	// accepted at most for the cache lifetime.
	other, rec2, err := tokens.Create(ctx, auth.CreateOptions{Policies: []string{"p"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Verify(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := st.Tokens().Delete(ctx, rec2.ID); err != nil {
		t.Fatal(err)
	}
	now = now.Add(auth.TokenCacheTTL)
	if _, err := tokens.Verify(ctx, other); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("token deleted elsewhere still verifies after the cache lifetime: %v", err)
	}

	// Expiry is checked on every call, cached or not.
	short, _, err := tokens.Create(ctx, auth.CreateOptions{Policies: []string{"p"}, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Verify(ctx, short); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	if _, err := tokens.Verify(ctx, short); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("expired cached token verified: %v", err)
	}

	// Counted uses always reach storage.
	twice, _, err := tokens.Create(ctx, auth.CreateOptions{Policies: []string{"p"}, Uses: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := tokens.Verify(ctx, twice); err != nil {
			t.Fatalf("use %d: %v", i+1, err)
		}
	}
	if _, err := tokens.Verify(ctx, twice); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("third use of a two-use token: %v", err)
	}
}

// TestCheckSpendsNothing: the server's early gate checks a use-limited
// token before the body is read; that check must not consume a use.
func TestCheckSpendsNothing(t *testing.T) {
	ctx := context.Background()
	tokens, _ := newTokens(t)
	once, _, err := tokens.Create(ctx, auth.CreateOptions{Policies: []string{"p"}, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	join, _, err := tokens.Create(ctx, auth.CreateOptions{Uses: 1, Meta: map[string]string{auth.PurposeMeta: "join"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := tokens.Check(ctx, once); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	if _, err := tokens.Check(ctx, join); !errors.Is(err, auth.ErrWrongPurpose) {
		t.Fatalf("check of a join token = %v, want ErrWrongPurpose", err)
	}
	if _, err := tokens.Check(ctx, auth.TokenPrefix+strings.Repeat("B", 43)); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("check of an unknown token = %v, want ErrInvalidToken", err)
	}
	if _, err := tokens.Verify(ctx, once); err != nil {
		t.Fatalf("the single use was spent by Check: %v", err)
	}
	if _, err := tokens.Check(ctx, once); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("check after the last use = %v, want ErrInvalidToken", err)
	}
	if _, err := tokens.VerifyPurpose(ctx, join, "join"); err != nil {
		t.Fatalf("the join token was spent by Check: %v", err)
	}
}

// TestIdentityCarriesLimits: a verified identity carries its token's expiry
// and the uses left after this call, which bound any token it creates.
func TestIdentityCarriesLimits(t *testing.T) {
	ctx := context.Background()
	tokens, _ := newTokens(t)
	exp := time.Hour
	tests := []struct {
		name     string
		opts     auth.CreateOptions
		wantLeft []int // per successive verification
		wantExp  bool
	}{
		{"unlimited", auth.CreateOptions{Policies: []string{"p"}}, []int{0, 0}, false},
		{"three uses", auth.CreateOptions{Policies: []string{"p"}, Uses: 3}, []int{2, 1, -1}, false},
		{"expiring", auth.CreateOptions{Policies: []string{"p"}, TTL: exp}, []int{0}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, rec, err := tokens.Create(ctx, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			for i, want := range tt.wantLeft {
				id, err := tokens.Verify(ctx, tok)
				if err != nil {
					t.Fatalf("verify %d: %v", i+1, err)
				}
				if id.UsesLeft != want {
					t.Errorf("verify %d: uses left %d, want %d", i+1, id.UsesLeft, want)
				}
				// Storage keeps microseconds.
				if !id.ExpiresAt.Equal(rec.ExpiresAt.Truncate(time.Microsecond)) || id.ExpiresAt.IsZero() == tt.wantExp {
					t.Errorf("verify %d: expires %v, want %v", i+1, id.ExpiresAt, rec.ExpiresAt)
				}
			}
		})
	}
}

// TestSpendAfterCheck: the gate's Check and authentication's Spend together
// spend exactly one use, and a checked token whose uses are gone (spent by
// a concurrent call) is refused by Spend without another lookup.
func TestSpendAfterCheck(t *testing.T) {
	ctx := context.Background()
	tokens, _ := newTokens(t)
	twice, _, err := tokens.Create(ctx, auth.CreateOptions{Policies: []string{"p"}, Uses: 2})
	if err != nil {
		t.Fatal(err)
	}
	c1, err := tokens.Check(ctx, twice)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := tokens.Check(ctx, twice)
	if err != nil {
		t.Fatal(err)
	}
	c3, err := tokens.Check(ctx, twice)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range []*auth.CheckedToken{c1, c2} {
		id, err := tokens.Spend(ctx, c)
		if err != nil {
			t.Fatalf("spend %d: %v", i, err)
		}
		if id.TokenID == "" || len(id.Policies) != 1 {
			t.Fatalf("spend %d: identity %+v", i, id)
		}
	}
	if _, err := tokens.Spend(ctx, c3); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("a third spend of a two-use token = %v, want ErrInvalidToken", err)
	}
}

// pausingStore holds a token read at its Point, between the read and
// its return.
type pausingStore struct {
	storage.Store
	at pausepoint.Point
}

func (p *pausingStore) Tokens() storage.Tokens { return pausingTokens{p.Store.Tokens(), p} }

type pausingTokens struct {
	storage.Tokens
	p *pausingStore
}

func (t pausingTokens) GetByHash(ctx context.Context, h []byte) (*storage.Token, error) {
	rec, err := t.Tokens.GetByHash(ctx, h)
	t.p.at.Here()
	return rec, err
}

// TestDeleteRacingVerification: a verification that read a token just
// before it was deleted on this node may still succeed (it began first),
// but it must not leave the record in the cache: the next verification is
// refused at once, not a cache lifetime later.
func TestDeleteRacingVerification(t *testing.T) {
	ctx := context.Background()
	st, b := barriertest.New(t)
	ps := &pausingStore{Store: st}
	tokens := auth.NewTokens(ps, b)
	tok, rec, err := tokens.Create(ctx, auth.CreateOptions{Policies: []string{"p"}})
	if err != nil {
		t.Fatal(err)
	}
	verr, derr := ps.at.Interleave(func() error { _, err := tokens.Verify(ctx, tok); return err },
		func() error { return tokens.Delete(ctx, rec.ID) })
	if verr != nil || derr != nil {
		t.Fatalf("the verification that began before the deletion: %v; the deletion: %v", verr, derr)
	}
	if _, err := tokens.Verify(ctx, tok); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("a token deleted on this node still verifies (cached by a racing verification): %v", err)
	}
}
