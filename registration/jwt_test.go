package registration_test

import (
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
	"github.com/sigil-ca/sigil/registration"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

// TestJWTSigner signs in both custody implementations (the sealed software
// keystore and PKCS#11 on SoftHSM): the key is made on first use and kept,
// and go-spiffe validates the JWT-SVID against the JWKS.
func TestJWTSigner(t *testing.T) {
	custodies := []struct {
		name string
		open func(t *testing.T) hsm.Custody
	}{
		{"soft", func(t *testing.T) hsm.Custody {
			_, b := barriertest.New(t)
			return hsm.NewSoft(hsmtest.NewMemBlobStore(), b, nil)
		}},
		{"pkcs11", func(t *testing.T) hsm.Custody {
			p, err := hsm.OpenPKCS11(context.Background(), hsmtest.NewSoftHSMToken(t), nil)
			if err != nil {
				t.Fatal(err)
			}
			return p
		}},
	}
	td := spiffeid.RequireTrustDomainFromString("sigil.test")
	for _, c := range custodies {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			cust := c.open(t)
			defer cust.Close()
			settings := newSettings(t)
			s := registration.NewJWTSigner(cust, settings, registration.JWTKeyPolicy{})
			now := time.Now()
			tok, exp, err := s.Sign(ctx, "spiffe://sigil.test/app", []string{"db"}, 0, now)
			if err != nil {
				t.Fatal(err)
			}
			if got := exp.Sub(now); got != registration.DefaultJWTTTL {
				t.Errorf("lifetime %v, want %v", got, registration.DefaultJWTTTL)
			}
			jwks, err := s.JWKS(ctx, now)
			if err != nil {
				t.Fatal(err)
			}
			b, err := jwtbundle.Parse(td, jwks)
			if err != nil {
				t.Fatal(err)
			}
			svid, err := jwtsvid.ParseAndValidate(tok, b, []string{"db"})
			if err != nil || svid.ID.String() != "spiffe://sigil.test/app" {
				t.Fatalf("validate: %v %v", svid, err)
			}
			if _, err := jwtsvid.ParseAndValidate(tok, b, []string{"other"}); err == nil {
				t.Error("validated for another audience")
			}
			// The key persists: a second signer over the same custody signs
			// with the same key.
			tok2, exp2, err := registration.NewJWTSigner(cust, settings, registration.JWTKeyPolicy{}).Sign(ctx, "spiffe://sigil.test/app", []string{"db"}, time.Hour*2, now)
			if err != nil {
				t.Fatal(err)
			}
			if got := exp2.Sub(now); got != registration.MaxJWTTTL {
				t.Errorf("asked for 2h, got %v; want the cap %v", got, registration.MaxJWTTTL)
			}
			if _, err := jwtsvid.ParseAndValidate(tok2, b, []string{"db"}); err != nil {
				t.Fatalf("second signer: %v", err)
			}
			if _, _, err := s.Sign(ctx, "spiffe://sigil.test/app", nil, 0, now); err == nil {
				t.Error("signed without an audience")
			}
		})
	}
}

// newSettings is a real SQLite store's settings, where the key ring lives.
func newSettings(t *testing.T) storage.Settings {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "sigil.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st.Settings()
}

func softCustody(t *testing.T) hsm.Custody {
	t.Helper()
	_, b := barriertest.New(t)
	c := hsm.NewSoft(hsmtest.NewMemBlobStore(), b, nil)
	t.Cleanup(func() { c.Close() })
	return c
}

// kidOf is the key id in a JWT's header.
func kidOf(t *testing.T, tok string) string {
	t.Helper()
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	return parsed.Headers[0].KeyID
}

func kids(t *testing.T, jwks []byte) []string {
	t.Helper()
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(jwks, &set); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.KeyID)
	}
	return out
}

// TestJWTKeyRotation walks one key's life: a successor is published Lead
// before it signs, takes over at the rotation, and its predecessor leaves
// the key set only once no token it signed can still be valid. A token
// validates against the key set at every step of its life.
func TestJWTKeyRotation(t *testing.T) {
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("sigil.test")
	policy := registration.JWTKeyPolicy{Rotation: 24 * time.Hour, Lead: time.Hour}
	cust := softCustody(t)
	s := registration.NewJWTSigner(cust, newSettings(t), policy)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	sign := func(at time.Time) string {
		t.Helper()
		tok, _, err := s.Sign(ctx, "spiffe://sigil.test/app", []string{"db"}, registration.MaxJWTTTL, at)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	jwks := func(at time.Time) []byte {
		t.Helper()
		b, err := s.JWKS(ctx, at)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	validAt := func(tok string, at time.Time) error {
		b, err := jwtbundle.Parse(td, jwks(at))
		if err != nil {
			t.Fatal(err)
		}
		// go-spiffe checks expiry against the wall clock; the rotation
		// schedule is what this checks, so only the key and signature.
		k, ok := b.FindJWTAuthority(kidOf(t, tok))
		if !ok {
			return fmt.Errorf("key %s not in the key set", kidOf(t, tok))
		}
		parsed, _ := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
		var c map[string]any
		return parsed.Claims(k, &c)
	}

	first := sign(t0)
	a := kidOf(t, first)
	if got := kids(t, jwks(t0)); !slices.Equal(got, []string{a}) {
		t.Fatalf("key set at start = %v, want [%s]", got, a)
	}
	// Just before the lead: nothing new.
	before := t0.Add(23*time.Hour - time.Second)
	if got := kids(t, jwks(before)); len(got) != 1 {
		t.Fatalf("key set before the lead = %v, want one key", got)
	}
	// Within the lead: the successor is published, the old key signs.
	lead := t0.Add(23 * time.Hour)
	set := kids(t, jwks(lead))
	if len(set) != 2 || set[0] != a {
		t.Fatalf("key set in the lead = %v, want [%s, successor]", set, a)
	}
	b := set[1]
	late := sign(lead.Add(59 * time.Minute))
	if kidOf(t, late) != a {
		t.Fatalf("a token in the lead was signed by %s, want the old key %s", kidOf(t, late), a)
	}
	// At the rotation: the successor signs.
	if got := kidOf(t, sign(t0.Add(24*time.Hour))); got != b {
		t.Fatalf("after the rotation signed by %s, want %s", got, b)
	}
	// The old key's last token (signed just before the rotation, valid an
	// hour) validates until it expires, plus the margin.
	for _, at := range []time.Time{t0.Add(24 * time.Hour), t0.Add(25*time.Hour + 4*time.Minute)} {
		if err := validAt(late, at); err != nil {
			t.Errorf("the old key's last token at %v: %v", at.Sub(t0), err)
		}
	}
	// Then the old key leaves the key set.
	retired := t0.Add(25*time.Hour + 5*time.Minute)
	if got := kids(t, jwks(retired)); !slices.Equal(got, []string{b}) {
		t.Fatalf("key set after retirement = %v, want [%s]", got, b)
	}
	if err := validAt(late, retired); err == nil {
		t.Error("a retired key's token still validates")
	}
	// The retired key is destroyed in custody; its successor is kept.
	if _, err := cust.Key(ctx, registration.JWTKeyName); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Errorf("the retired key in custody: %v, want ErrKeyNotFound", err)
	}
	if keys, err := cust.ListKeys(ctx); err != nil || len(keys) != 1 {
		t.Errorf("custody holds %d keys after retirement (%v), want the successor only", len(keys), err)
	}
	// And the cycle goes on: the third key is prepared a day later.
	if got := kids(t, jwks(t0.Add(47*time.Hour))); len(got) != 2 || got[0] != b {
		t.Fatalf("key set at the second lead = %v, want [%s, third]", got, b)
	}
}

// TestJWTKeyRotationRace: nodes sharing a database and custody that reach
// the lead at once prepare exactly one successor and agree on it.
func TestJWTKeyRotationRace(t *testing.T) {
	ctx := context.Background()
	cust, settings := softCustody(t), newSettings(t)
	policy := registration.JWTKeyPolicy{Rotation: 24 * time.Hour, Lead: time.Hour}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	if _, err := registration.NewJWTSigner(cust, settings, policy).JWKS(ctx, t0); err != nil {
		t.Fatal(err)
	}
	const nodes = 6
	sets := make([][]byte, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			sets[i], errs[i] = registration.NewJWTSigner(cust, settings, policy).JWKS(ctx, t0.Add(23*time.Hour))
		})
	}
	wg.Wait()
	for i := range nodes {
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i, errs[i])
		}
		if got, want := kids(t, sets[i]), kids(t, sets[0]); len(got) != 2 || !slices.Equal(got, want) {
			t.Fatalf("node %d published %v, node 0 %v: want the same two keys", i, got, want)
		}
	}
	keys, err := cust.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Errorf("custody holds %d keys after the race, want 2 (one successor)", len(keys))
	}
}

// TestJWTKeyAdopted: a key made before key rings existed keeps signing, so
// tokens and bundles out there stay valid across the upgrade.
func TestJWTKeyAdopted(t *testing.T) {
	ctx := context.Background()
	cust := softCustody(t)
	k, err := cust.CreateKey(ctx, registration.JWTKeyName, hsm.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	want, err := (&jose.JSONWebKey{Key: k.Public}).Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := registration.NewJWTSigner(cust, newSettings(t), registration.JWTKeyPolicy{}).Sign(ctx, "spiffe://sigil.test/app", []string{"db"}, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := kidOf(t, tok); got != base64.RawURLEncoding.EncodeToString(want) {
		t.Fatalf("signed by %s, want the existing key", got)
	}
}

// TestJWTKeyRotateDestroys: Rotate with retirePrevious destroys the keys it
// drops (the one that signed and a prepared successor). A peer whose ring
// was cached before signs with the new key at once (it reads the ring
// again when custody no longer has its active key) and its key set leaves
// out a dropped key it never described.
func TestJWTKeyRotateDestroys(t *testing.T) {
	ctx := context.Background()
	cust, settings := softCustody(t), newSettings(t)
	policy := registration.JWTKeyPolicy{Rotation: 24 * time.Hour, Lead: time.Hour}
	a := registration.NewJWTSigner(cust, settings, policy)
	b := registration.NewJWTSigner(cust, settings, policy)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	if _, err := a.JWKS(ctx, t0); err != nil {
		t.Fatal(err)
	}
	lead := t0.Add(23 * time.Hour)
	if got := kids(t, mustJWKS(t, a, lead)); len(got) != 2 {
		t.Fatalf("key set in the lead = %v, want two keys", got)
	}
	// b caches the ring [first, successor] and describes only the first,
	// the one it signs with.
	tok, _, err := b.Sign(ctx, "spiffe://sigil.test/app", []string{"db"}, 0, lead)
	if err != nil {
		t.Fatal(err)
	}
	first := kidOf(t, tok)

	keys, err := a.Rotate(ctx, lead.Add(5*time.Second), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || !keys[0].Active {
		t.Fatalf("key set after rotating with retirePrevious = %+v, want one active key", keys)
	}
	list, err := cust.ListKeys(ctx)
	if err != nil || len(list) != 1 || list[0].Name != keys[0].Name {
		t.Fatalf("custody after the rotation holds %d keys (%v), want only %s", len(list), err, keys[0].Name)
	}

	// Within b's ring cache: its key set leaves out the successor it never
	// described (the first is still cached and still listed until b reads
	// the ring again).
	if got := kids(t, mustJWKS(t, b, lead.Add(10*time.Second))); !slices.Equal(got, []string{first}) {
		t.Fatalf("b's key set from its cached ring = %v, want [%s]", got, first)
	}
	tok, _, err = b.Sign(ctx, "spiffe://sigil.test/app", []string{"db"}, 0, lead.Add(10*time.Second))
	if err != nil {
		t.Fatalf("b signing after the peer's rotation: %v", err)
	}
	if got := kidOf(t, tok); got != keys[0].KID {
		t.Fatalf("b signed with %s, want the new key %s", got, keys[0].KID)
	}
}

func mustJWKS(t *testing.T, s *registration.JWTSigner, at time.Time) []byte {
	t.Helper()
	b, err := s.JWKS(context.Background(), at)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestJWTKeyRingTamperDestroysNothingElse: a ring record edited in the
// database to list another custody key (a CA's) does not get that key
// destroyed when the ring changes.
func TestJWTKeyRingTamperDestroysNothingElse(t *testing.T) {
	ctx := context.Background()
	cust, settings := softCustody(t), newSettings(t)
	if _, err := cust.CreateKey(ctx, "ca-root", hsm.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	s := registration.NewJWTSigner(cust, settings, registration.JWTKeyPolicy{})
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	if _, err := s.JWKS(ctx, t0); err != nil {
		t.Fatal(err)
	}
	raw, err := settings.Get(ctx, "registration/jwt-svid-keys")
	if err != nil {
		t.Fatal(err)
	}
	var ring map[string][]map[string]any
	if err := json.Unmarshal(raw, &ring); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ca-root", "agent-jwt-svid.02", "agent-jwt-svid.1"} {
		ring["keys"] = append([]map[string]any{{"name": name, "created": t0, "active_from": t0}}, ring["keys"]...)
	}
	tampered, err := json.Marshal(ring)
	if err != nil {
		t.Fatal(err)
	}
	if err := settings.Replace(ctx, "registration/jwt-svid-keys", raw, tampered); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"agent-jwt-svid.02", "agent-jwt-svid.1"} {
		if _, err := cust.CreateKey(ctx, n, hsm.ECDSAP256); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := registration.NewJWTSigner(cust, settings, registration.JWTKeyPolicy{}).Rotate(ctx, t0.Add(time.Minute), true); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"ca-root", "agent-jwt-svid.02", "agent-jwt-svid.1"} {
		if _, err := cust.Key(ctx, n); err != nil {
			t.Errorf("%s after a rotation of a tampered ring: %v, want it kept", n, err)
		}
	}
	if _, err := cust.Key(ctx, registration.JWTKeyName); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Errorf("the ring's own retired key: %v, want it destroyed", err)
	}
}
