package core_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines"
	kvengine "github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/engines/tokens"
	"github.com/sigil-ca/sigil/engines/transit"
	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/internal/adapt"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/issuer/acme"
	"github.com/sigil-ca/sigil/issuer/validation"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

// stack is a real store and barrier in a temporary data directory, shared
// by the Cores a test opens over it in turn (as restarts would).
type stack struct {
	dir   string
	store storage.Store
}

func newStack(t *testing.T) *stack {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "sigil.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &stack{dir: dir, store: st}
}

// open returns a new sealed Core over the stack with its own barrier, as
// one server process has. mutate adjusts the options.
func (s *stack) open(t *testing.T, mutate ...func(*core.Options)) (*core.Core, *barrier.Barrier) {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = s.dir
	cfg.PublicURL = "http://127.0.0.1:1"
	cfg.ACME.Disabled = true
	b := barrier.New(adapt.Keyring(s.store.Keyring()))
	o := core.Options{Config: cfg, Store: s.store, Barrier: b}
	for _, m := range mutate {
		m(&o)
	}
	c := core.New(o)
	t.Cleanup(c.Close)
	return c, b
}

// recipient is the operator's key the init response is sealed to.
type recipient struct {
	priv hpke.PrivateKey
	pub  envelope.Recipient
}

func newRecipient(t *testing.T) recipient {
	t.Helper()
	priv, pub, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
	if err != nil {
		t.Fatal(err)
	}
	return recipient{priv, pub}
}

// initialise runs Init and opens its envelope: the shares and root token.
func initialise(t *testing.T, c *core.Core, n, k int) (shares []string, root string) {
	t.Helper()
	r := newRecipient(t)
	res, err := c.Init(context.Background(), core.InitRequest{Shares: n, Threshold: k, Recipient: &r.pub})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	var env envelope.Envelope
	if err := env.UnmarshalBinary(res.Envelope); err != nil {
		t.Fatal(err)
	}
	data, err := envelope.OpenData(r.priv, &env, "init")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		sh := data[fmt.Sprintf("share_%d", i+1)]
		if sh == "" {
			t.Fatalf("share %d missing from the init envelope", i+1)
		}
		shares = append(shares, sh)
	}
	if data["root_token"] == "" {
		t.Fatal("root token missing from the init envelope")
	}
	return shares, data["root_token"]
}

func kindOf(err error) (errs.Kind, bool) {
	e, ok := errs.As(err)
	if !ok {
		return 0, false
	}
	return e.Kind, true
}

// TestSealLifecycle: Init unseals and creates a root token; Seal drops the
// graph and locks the barrier; shares below the threshold count progress,
// a repeated or foreign share is refused with the progress kept, and the
// threshold share unseals with the same keyring (the root token still
// verifies). A restart over the same store comes up sealed and initialised.
func TestSealLifecycle(t *testing.T) {
	ctx := context.Background()
	s := newStack(t)
	c, b := s.open(t)
	if st := c.Status(); st.Initialized || !st.Sealed() {
		t.Fatalf("fresh status = %+v, want uninitialised and sealed", st)
	}
	if _, err := c.Unseal(ctx, "sgs1_x"); !isKind(err, errs.FailedPrecondition) {
		t.Fatalf("Unseal before Init = %v, want a precondition error", err)
	}
	shares, root := initialise(t, c, 3, 2)
	u := c.Current()
	if u == nil || b.Sealed() {
		t.Fatal("not unsealed after Init")
	}
	if _, err := u.Tokens.Verify(ctx, root); err != nil {
		t.Fatalf("root token from Init does not verify: %v", err)
	}
	if st := c.Status(); !st.Initialized || st.Sealed() || st.Threshold != 2 {
		t.Fatalf("status after Init = %+v", st)
	}
	if err := c.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Current() != nil || !b.Sealed() {
		t.Fatal("Seal left the graph or the barrier open")
	}
	if _, err := c.Unsealed(); !errors.Is(err, core.ErrSealed) {
		t.Fatalf("Unsealed while sealed = %v, want ErrSealed", err)
	}

	// Shares from another initialisation are foreign here.
	other, _ := initialise(t, newStack(t).openOnly(t), 3, 2)
	steps := []struct {
		name         string
		share        string
		wantKind     errs.Kind
		wantErr      bool
		wantSealed   bool
		wantProgress int
	}{
		{"first share", shares[0], 0, false, true, 1},
		{"same share again", shares[0], errs.InvalidArgument, true, true, 1},
		{"foreign share", other[1], errs.InvalidArgument, true, true, 1},
		{"malformed share", "not-a-share", errs.InvalidArgument, true, true, 1},
		{"threshold share", shares[2], 0, false, false, 0},
		{"after unsealing", shares[1], 0, false, false, 0},
	}
	for _, st := range steps {
		got, err := c.Unseal(ctx, st.share)
		if st.wantErr {
			if !isKind(err, st.wantKind) {
				t.Fatalf("%s: Unseal = %v, want kind %d", st.name, err, st.wantKind)
			}
		} else if err != nil {
			t.Fatalf("%s: Unseal: %v", st.name, err)
		} else if got.Sealed != st.wantSealed || got.Progress != st.wantProgress || got.Threshold != 2 {
			t.Fatalf("%s: Unseal = %+v, want sealed %v progress %d/2", st.name, got, st.wantSealed, st.wantProgress)
		}
		if status := c.Status(); status.Sealed() != st.wantSealed || status.Progress != st.wantProgress {
			t.Fatalf("%s: Status = %+v, want sealed %v progress %d", st.name, status, st.wantSealed, st.wantProgress)
		}
	}
	if _, err := c.Current().Tokens.Verify(ctx, root); err != nil {
		t.Fatalf("root token after unsealing with shares: %v", err)
	}

	// A restart: the next process over the same store waits sealed.
	c.Close()
	c2, _ := s.open(t)
	if err := c2.Start(ctx, false); err != nil {
		t.Fatal(err)
	}
	if st := c2.Status(); !st.Initialized || !st.Sealed() || st.Threshold != 2 || st.Progress != 0 {
		t.Fatalf("status after restart = %+v, want initialised, sealed, 0/2", st)
	}
	again := newRecipient(t).pub
	if _, err := c2.Init(ctx, core.InitRequest{Shares: 1, Threshold: 1, Recipient: &again}); !isKind(err, errs.FailedPrecondition) {
		t.Fatalf("Init of an initialised store = %v, want a precondition error", err)
	}
	for _, sh := range shares[1:] {
		if _, err := c2.Unseal(ctx, sh); err != nil {
			t.Fatal(err)
		}
	}
	if c2.Current() == nil {
		t.Fatal("restarted core did not unseal with two shares")
	}
}

// openOnly opens a Core without keeping its stack around.
func (s *stack) openOnly(t *testing.T) *core.Core {
	c, _ := s.open(t)
	return c
}

func isKind(err error, k errs.Kind) bool {
	got, ok := kindOf(err)
	return ok && got == k
}

// TestResetUnseal: Reset forgets the shares offered so far.
func TestResetUnseal(t *testing.T) {
	ctx := context.Background()
	c, _ := newStack(t).open(t)
	shares, _ := initialise(t, c, 3, 3)
	if err := c.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	for _, sh := range shares[:2] {
		if _, err := c.Unseal(ctx, sh); err != nil {
			t.Fatal(err)
		}
	}
	st, err := c.ResetUnseal()
	if err != nil || !st.Sealed || st.Progress != 0 || c.Status().Progress != 0 {
		t.Fatalf("ResetUnseal = %+v, %v; status %+v; want sealed with no progress", st, err, c.Status())
	}
	// The share offered before the reset counts again.
	if st, err := c.Unseal(ctx, shares[0]); err != nil || st.Progress != 1 {
		t.Fatalf("Unseal after reset = %+v, %v; want progress 1", st, err)
	}
}

// TestInitRefused: Init refuses bad requests, and dev servers, before
// creating anything; the store stays uninitialised.
func TestInitRefused(t *testing.T) {
	rcpt := newRecipient(t).pub
	bad := envelope.Recipient{KEM: envelope.KEMX25519HKDFSHA256, PublicKey: []byte("short")}
	// An all-zero X25519 key parses as a PEM public key but cannot be
	// encrypted to: refused up front, not as "encrypt share: internal error".
	zeroDER := append([]byte{0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00}, make([]byte, 32)...)
	zeroPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: zeroDER})
	tests := []struct {
		name string
		dev  bool
		req  core.InitRequest
		want errs.Kind
	}{
		{"dev server", true, core.InitRequest{Shares: 1, Threshold: 1, Recipient: &rcpt}, errs.FailedPrecondition},
		{"zero threshold", false, core.InitRequest{Shares: 1, Threshold: 0, Recipient: &rcpt}, errs.InvalidArgument},
		{"threshold above shares", false, core.InitRequest{Shares: 2, Threshold: 3, Recipient: &rcpt}, errs.InvalidArgument},
		{"too many shares", false, core.InitRequest{Shares: 256, Threshold: 2, Recipient: &rcpt}, errs.InvalidArgument},
		{"share recipients mismatch", false, core.InitRequest{Shares: 2, Threshold: 1, ShareRecipients: [][]byte{[]byte("x")}, Recipient: &rcpt}, errs.InvalidArgument},
		{"bad share recipient", false, core.InitRequest{Shares: 1, Threshold: 1, ShareRecipients: [][]byte{[]byte("not pem")}, Recipient: &rcpt}, errs.InvalidArgument},
		{"all-zero share recipient", false, core.InitRequest{Shares: 1, Threshold: 1, ShareRecipients: [][]byte{zeroPEM}, Recipient: &rcpt}, errs.InvalidArgument},
		{"no recipient", false, core.InitRequest{Shares: 1, Threshold: 1}, errs.InvalidArgument},
		{"malformed recipient", false, core.InitRequest{Shares: 1, Threshold: 1, Recipient: &bad}, errs.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newStack(t).open(t, func(o *core.Options) { o.Config.Dev = tt.dev })
			_, err := c.Init(context.Background(), tt.req)
			if !isKind(err, tt.want) {
				t.Fatalf("Init = %v, want kind %d", err, tt.want)
			}
			if tt.dev {
				return
			}
			if st := c.Status(); st.Initialized || !st.Sealed() {
				t.Fatalf("status after a refused Init = %+v", st)
			}
		})
	}
}

// TestRotateRewrapsEveryKind fills the store with a value of every kind the
// graph seals (software keys, auth and audit settings, mount documents,
// engine data, lease revocation data, ACME EAB keys), rotates the barrier
// key and rewraps. Every value moves to the new key, and no kind the
// barrier sealed lacks a registered rewrapper: a new sealed kind without
// one fails here.
func TestRotateRewrapsEveryKind(t *testing.T) {
	ctx := context.Background()
	s := newStack(t)
	c, b := s.open(t, func(o *core.Options) {
		o.Config.ACME.Disabled = false
		sealer := o.Barrier
		o.Wiring.ACME = func(u *core.Unsealed) (*acme.Server, error) {
			va, err := validation.New(validation.Config{})
			if err != nil {
				return nil, err
			}
			return acme.New(acme.Config{BaseURL: "https://127.0.0.1:1/acme", Provisioners: []acme.Provisioner{{Name: "default"}}},
				acme.Deps{CA: u.CA, VA: va, Store: s.store, Sealer: sealer})
		}
	})
	shares, root := initialise(t, c, 1, 1)
	u := c.Current()
	if err := u.CA.InitHierarchy(ctx, ca.InitRequest{CommonName: "core test", KeyType: hsm.ECDSAP256}); err != nil {
		t.Fatal(err)
	}
	fillEngines(t, u)
	if _, err := u.ACME.CreateEAB(ctx, "default", acme.EABPolicy{}); err != nil {
		t.Fatal(err)
	}

	want := []string{hsm.SoftKeyKind, auth.SettingKind, engines.SealKind, engines.DataSealKind, lease.SealKind, acme.EABSealKind, kvengine.SealKind}
	for _, k := range want {
		if !slices.Contains(b.SealedKinds(), k) {
			t.Fatalf("the test sealed no %q value (sealed %v): it no longer exercises every kind", k, b.SealedKinds())
		}
	}
	if got := b.UnregisteredKinds(); len(got) != 0 {
		t.Fatalf("kinds sealed without a rewrapper: %v (register one where the values are owned)", got)
	}

	before, err := c.Rewrap(ctx)
	if err != nil || before.Rewrapped != 0 || before.Current < int64(len(want)) {
		t.Fatalf("Rewrap before rotating = %+v, %v; want nothing to rewrap", before, err)
	}
	v, err := c.RotateKey(ctx)
	if err != nil || v != 2 {
		t.Fatalf("RotateKey = %d, %v; want version 2", v, err)
	}
	st, err := c.Rewrap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Rewrapped != before.Current || st.Current != 0 {
		t.Fatalf("Rewrap after rotating = %+v, want all %d values rewrapped", st, before.Current)
	}
	again, err := c.Rewrap(ctx)
	if err != nil || again.Rewrapped != 0 || again.Current != before.Current {
		t.Fatalf("second Rewrap = %+v, %v; want all %d current", again, err, before.Current)
	}

	// The values still open through their owners after sealing and
	// unsealing with the rotated keyring: the root token (auth's sealed
	// HMAC key), a transit encryption (mount document and engine data) and
	// a signature by the CA (software keys).
	if err := c.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Unseal(ctx, shares[0]); err != nil {
		t.Fatal(err)
	}
	u = c.Current()
	if _, err := u.Tokens.Verify(ctx, root); err != nil {
		t.Fatalf("root token after rewrap: %v", err)
	}
	eng, err := u.Mounts.Engine(ctx, "transit")
	if err != nil {
		t.Fatal(err)
	}
	res, err := eng.(*transit.Engine).Encrypt(ctx, "k", []transit.Item{{Plaintext: []byte("x")}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("transit encrypt after rewrap: %v %+v", err, res)
	}
	if _, err := u.CA.Sign(ctx, ca.SignRequest{CSR: csr(t), Profile: "server", Requester: "core-test"}); err != nil {
		t.Fatalf("CA sign after rewrap: %v", err)
	}
}

func csr(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"core.test"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// fillEngines mounts a tokens engine with a JWT role and mints through the
// lease manager (mount document, engine data, custody key, lease), and a
// transit key (engine data).
func fillEngines(t *testing.T, u *core.Unsealed) {
	t.Helper()
	ctx := context.Background()
	if err := u.Mounts.Enable(ctx, "tok", tokens.Type); err != nil {
		t.Fatal(err)
	}
	if err := u.Mounts.WriteRole(ctx, "tok", "svc", map[string]string{tokens.KeyFormat: tokens.FormatOpaque, tokens.KeyTTL: "1h"}); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Leases.Mint(ctx, lease.MintRequest{Mount: "tok", Role: "svc", Identity: "token:test"}); err != nil {
		t.Fatal(err)
	}
	if err := u.Mounts.Enable(ctx, "transit", transit.Type); err != nil {
		t.Fatal(err)
	}
	eng, err := u.Mounts.Engine(ctx, "transit")
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.(*transit.Engine).CreateKey(ctx, "k", transit.AES256GCM, false); err != nil {
		t.Fatal(err)
	}
	if err := u.Mounts.Enable(ctx, "kv", kvengine.Type); err != nil {
		t.Fatal(err)
	}
	if eng, err = u.Mounts.Engine(ctx, "kv"); err != nil {
		t.Fatal(err)
	}
	if _, err := eng.(*kvengine.Engine).Put(ctx, "app/db", map[string][]byte{"password": []byte("p")}, nil); err != nil {
		t.Fatal(err)
	}
}

// TestRunStopsOnCancel: the graph's background work ends promptly once its
// context is cancelled, and Seal (which stops the graph's own Run) returns
// promptly too.
func TestRunStopsOnCancel(t *testing.T) {
	c, _ := newStack(t).open(t)
	initialise(t, c, 1, 1)
	u := c.Current()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("Run returned before cancel: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of cancel")
	}
	sealed := make(chan error, 1)
	go func() { sealed <- c.Seal(context.Background()) }()
	select {
	case err := <-sealed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Seal did not stop the background work within 5s")
	}
}

// TestDevStart: a dev core creates its key file on a fresh directory,
// unseals from it, bootstraps a CA and root token, and a restart reuses
// both; a missing key file next to existing data is refused.
func TestDevStart(t *testing.T) {
	ctx := context.Background()
	s := newStack(t)
	dev := func(o *core.Options) { o.Config.Dev = true }
	c, _ := s.open(t, dev)
	if err := c.Start(ctx, true); err != nil {
		t.Fatal(err)
	}
	tok, err := c.DevBootstrap(ctx)
	if err != nil || tok == "" {
		t.Fatalf("DevBootstrap = %q, %v", tok, err)
	}
	if err := c.Seal(ctx); !isKind(err, errs.FailedPrecondition) {
		t.Fatalf("Seal of a dev core = %v, want a precondition error", err)
	}
	c.Close()

	c2, _ := s.open(t, dev)
	if err := c2.Start(ctx, false); err != nil {
		t.Fatal(err)
	}
	tok2, err := c2.DevBootstrap(ctx)
	if err != nil || tok2 != tok {
		t.Fatalf("DevBootstrap after restart = %q, %v; want the same root token", tok2, err)
	}
	if c2.Current().CA.Root() == nil {
		t.Fatal("no CA after restart")
	}
	c2.Close()

	if err := os.Remove(filepath.Join(s.dir, core.DevUnsealFile)); err != nil {
		t.Fatal(err)
	}
	c3, _ := s.open(t, dev)
	if err := c3.Start(ctx, false); err == nil {
		t.Fatal("Start without the dev key file over existing data succeeded")
	}
}

// TestSVIDConfigReachesTheJWTSigner: svid.jwt_key_rotation and
// svid.jwt_key_lead set the schedule of the unsealed core's JWT-SVID key
// ring. With a 2 h rotation and a 30 min lead the successor is published
// 1 h 30 min after the first key; with the defaults (a week, an hour) it
// is not.
func TestSVIDConfigReachesTheJWTSigner(t *testing.T) {
	for _, tt := range []struct {
		name           string
		rotation, lead time.Duration
		at             time.Duration // after the first key
		want           int           // keys published
	}{
		{"configured, before the lead", 2 * time.Hour, 30 * time.Minute, 89 * time.Minute, 1},
		{"configured, in the lead", 2 * time.Hour, 30 * time.Minute, 91 * time.Minute, 2},
		{"defaults, at the same time", 0, 0, 91 * time.Minute, 1},
		{"defaults, in their lead", 0, 0, 167*time.Hour + time.Minute, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			c, _ := newStack(t).open(t, func(o *core.Options) {
				o.Config.Dev = true
				o.Config.SVID.JWTKeyRotation = config.Duration(tt.rotation)
				o.Config.SVID.JWTKeyLead = config.Duration(tt.lead)
			})
			if err := c.Start(ctx, true); err != nil {
				t.Fatal(err)
			}
			signer := c.Current().JWTSVIDs
			t0 := time.Now()
			count := func(at time.Time) int {
				doc, err := signer.JWKS(ctx, at)
				if err != nil {
					t.Fatal(err)
				}
				var set struct{ Keys []json.RawMessage }
				if err := json.Unmarshal(doc, &set); err != nil {
					t.Fatal(err)
				}
				return len(set.Keys)
			}
			if n := count(t0); n != 1 {
				t.Fatalf("%d keys at first, want 1", n)
			}
			if n := count(t0.Add(tt.at)); n != tt.want {
				t.Fatalf("%d keys %v after the first, want %d", n, tt.at, tt.want)
			}
		})
	}
}
