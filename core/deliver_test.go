package core_test

import (
	"context"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/internal/errs"
)

// TestDeliver: a secret sealed to a recipient opens with its key, bound to
// the binding id; a wrapped one unwraps exactly once, sealed to the
// unwrapper's key; a delivery that fails runs undo once; Deliver clears
// the secret's data.
func TestDeliver(t *testing.T) {
	ctx := context.Background()
	c, _ := newStack(t).open(t)
	initialise(t, c, 1, 1)
	r := newRecipient(t)
	bad := envelope.Recipient{KEM: envelope.KEMX25519HKDFSHA256, PublicKey: []byte("short")}
	tests := []struct {
		name     string
		to       core.To
		wantErr  bool
		wantUndo int
	}{
		{"sealed", core.To{Recipient: r.pub}, false, 0},
		{"wrapped", core.To{WrapTTL: time.Minute}, false, 0},
		{"unsealable recipient", core.To{Recipient: bad}, true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := map[string]string{"password": "canary"}
			undos := 0
			d, err := c.Deliver(ctx, tt.to, core.Secret{BindingID: "db/ro/1", Data: data, LeaseSeconds: 60, Renewable: true},
				func(context.Context) error { undos++; return nil })
			if len(data) != 0 {
				t.Errorf("secret data not cleared: %v", data)
			}
			if undos != tt.wantUndo {
				t.Fatalf("undo ran %d times, want %d", undos, tt.wantUndo)
			}
			if tt.wantErr {
				if err == nil {
					t.Fatal("delivery to an unusable recipient succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wire := d.Envelope
			if tt.to.Wrapped() {
				if d.Envelope != nil || d.WrapToken == "" || time.Until(d.WrapExpires) > time.Minute {
					t.Fatalf("wrapped delivery = %+v", d)
				}
				u, err := c.Unwrap(ctx, d.WrapToken, r.pub)
				if err != nil {
					t.Fatal(err)
				}
				if u.LeaseID != "db/ro/1" || u.LeaseSeconds != 60 || !u.Renewable {
					t.Fatalf("unwrapped = %+v", u)
				}
				if _, err := c.Unwrap(ctx, d.WrapToken, r.pub); !errs.Is(err, errs.Unauthenticated) {
					t.Fatalf("second unwrap = %v, want Unauthenticated", err)
				}
				wire = u.Envelope
			} else if d.WrapToken != "" {
				t.Fatalf("sealed delivery has a wrapping token")
			}
			var env envelope.Envelope
			if err := env.UnmarshalBinary(wire); err != nil {
				t.Fatal(err)
			}
			if _, err := envelope.OpenData(r.priv, &env, "other-binding"); err == nil {
				t.Fatal("envelope opened under another binding id")
			}
			got, err := envelope.OpenData(r.priv, &env, "db/ro/1")
			if err != nil || got["password"] != "canary" {
				t.Fatalf("opened %v, %v", got, err)
			}
		})
	}
}

// TestRecipientResolution: missing, malformed and unknown recipients are
// refused with the kind the caller can act on, before anything is minted.
func TestRecipientResolution(t *testing.T) {
	ctx := context.Background()
	c, _ := newStack(t).open(t)
	initialise(t, c, 1, 1)
	r := newRecipient(t)
	tests := []struct {
		name string
		ref  *core.RecipientRef
		kind errs.Kind
		ok   bool
	}{
		{"key", &core.RecipientRef{KEM: uint32(r.pub.KEM), PublicKey: r.pub.PublicKey}, 0, true},
		{"missing", nil, errs.InvalidArgument, false},
		{"kem out of range", &core.RecipientRef{KEM: 0x10000, PublicKey: r.pub.PublicKey}, errs.InvalidArgument, false},
		{"short key", &core.RecipientRef{KEM: uint32(r.pub.KEM), PublicKey: []byte("x")}, errs.InvalidArgument, false},
		{"unknown certificate", &core.RecipientRef{CertificateSerial: "00ff"}, errs.NotFound, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			to, err := c.Destination(ctx, tt.ref, 0)
			if tt.ok {
				if err != nil || to.Wrapped() || to.Recipient.KEM != r.pub.KEM {
					t.Fatalf("Destination = %+v, %v", to, err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			// The CA reports an unknown serial with its own kind.
			if k := errs.KindOf(err); k != tt.kind && !(tt.kind == errs.NotFound && ca.KindOf(err) == ca.KindNotFound) {
				t.Fatalf("%v: kind %v, want %v", err, k, tt.kind)
			}
		})
	}
	// Wrapping needs no recipient now: the unwrapper names one.
	if to, err := c.Destination(ctx, nil, time.Minute); err != nil || !to.Wrapped() {
		t.Fatalf("wrapped destination = %+v, %v", to, err)
	}
}

// TestDestinationSealsToItsRecipient: a destination resolved by
// Destination (whose check prepared the first envelope's encapsulation)
// delivers any number of times, each envelope with its own encapsulation,
// and a destination whose Recipient was changed afterwards seals to the
// new key, never to the one resolved.
func TestDestinationSealsToItsRecipient(t *testing.T) {
	ctx := context.Background()
	c, _ := newStack(t).open(t)
	initialise(t, c, 1, 1)
	r, other := newRecipient(t), newRecipient(t)
	to, err := c.Destination(ctx, &core.RecipientRef{KEM: uint32(r.pub.KEM), PublicKey: r.pub.PublicKey}, 0)
	if err != nil {
		t.Fatal(err)
	}
	open := func(to core.To, priv recipient) *envelope.Envelope {
		t.Helper()
		d, err := c.Deliver(ctx, to, core.Secret{BindingID: "kv:m/data/p", Data: map[string]string{"k": "v"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var env envelope.Envelope
		if err := env.UnmarshalBinary(d.Envelope); err != nil {
			t.Fatal(err)
		}
		if got, err := envelope.OpenData(priv.priv, &env, "kv:m/data/p"); err != nil || got["k"] != "v" {
			t.Fatalf("opened %v, %v", got, err)
		}
		return &env
	}
	first, second := open(to, r), open(to, r)
	if string(first.Enc) == string(second.Enc) {
		t.Fatal("two deliveries share an encapsulation")
	}
	to.Recipient = other.pub
	open(to, other)
}
