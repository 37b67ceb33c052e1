package core

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/storage"
)

// Secret delivery: every response that carries a secret (credentials, API
// tokens, EAB keys, join tokens, transit plaintext, the init response)
// leaves through Deliver, sealed to a recipient key or wrapped under a
// single-use token, never in the clear. Sealing happens here and only here.

// RecipientRef names the key a secret is sealed to, as a request gives it:
// a certificate Sigil issued (by serial), or a KEM id and public key.
type RecipientRef struct {
	CertificateSerial string
	KEM               uint32
	PublicKey         []byte
}

// To is where a secret goes: sealed to Recipient, or, when WrapTTL is
// positive, wrapped under a single-use token that lives that long (the
// unwrapper names the recipient then).
type To struct {
	Recipient envelope.Recipient
	WrapTTL   time.Duration
	// sealer, when set, is Recipient checked with its first envelope's
	// encapsulation already done (by Destination): Deliver seals with it
	// instead of encapsulating again.
	sealer *envelope.Sealer
}

// Wrapped reports whether the secret is wrapped rather than sealed now.
func (t To) Wrapped() bool { return t.WrapTTL > 0 }

// Secret is what Deliver hands out. BindingID binds the envelope to what
// it is for (a lease id, "join:ID", "transit:MOUNT/KEY"); the lease fields
// are what an unwrap reports back.
type Secret struct {
	BindingID    string
	Data         map[string]string
	LeaseSeconds int64
	Renewable    bool
}

// Delivery is the part of a response that carries the secret: an envelope,
// or a wrapping token and its expiry.
type Delivery struct {
	Envelope    []byte
	WrapToken   string
	WrapExpires time.Time
}

// Recipient resolves ref to a key, refusing a missing, malformed, revoked
// or unusable one. Resolve it before anything is minted, so a bad
// recipient never leaves a secret behind.
func (c *Core) Recipient(ctx context.Context, ref *RecipientRef) (envelope.Recipient, error) {
	s, err := c.recipientSealer(ctx, ref)
	if err != nil {
		return envelope.Recipient{}, err
	}
	return s.Recipient(), nil
}

// recipientSealer is Recipient with the check's KEM encapsulation kept for
// the envelope that follows (envelope.Sealer).
func (c *Core) recipientSealer(ctx context.Context, ref *RecipientRef) (*envelope.Sealer, error) {
	if ref == nil {
		return nil, errs.New(errs.InvalidArgument, "recipient is required: secrets are only returned sealed to a recipient key")
	}
	if serial := ref.CertificateSerial; serial != "" {
		u, err := c.Unsealed()
		if err != nil {
			return nil, err
		}
		rec, err := u.CA.Get(ctx, serial)
		if err != nil {
			return nil, fmt.Errorf("recipient certificate: %w", err)
		}
		if rec.Status == storage.CertRevoked {
			return nil, errs.Errorf(errs.FailedPrecondition, "recipient certificate %s is revoked", serial)
		}
		cert, err := x509.ParseCertificate(rec.DER)
		if err != nil {
			return nil, errs.Wrap(errs.Internal, "recipient certificate", err)
		}
		rcpt, err := envelope.RecipientFromCertificate(cert, time.Now())
		if err != nil {
			return nil, errs.Errorf(errs.FailedPrecondition, "recipient certificate %s: %v", serial, err)
		}
		s, err := rcpt.NewSealer()
		if err != nil {
			return nil, errs.Errorf(errs.FailedPrecondition, "recipient certificate %s: %v", serial, err)
		}
		return s, nil
	}
	if ref.KEM > 0xffff {
		return nil, errs.Errorf(errs.InvalidArgument, "recipient kem 0x%x is not an HPKE KEM id", ref.KEM)
	}
	s, err := envelope.Recipient{KEM: uint16(ref.KEM), PublicKey: ref.PublicKey}.NewSealer()
	if err != nil {
		return nil, errs.Errorf(errs.InvalidArgument, "recipient: %v", err)
	}
	return s, nil
}

// Destination resolves where a secret will go: wrapped when wrapTTL is
// positive (no recipient needed now), else sealed to ref.
func (c *Core) Destination(ctx context.Context, ref *RecipientRef, wrapTTL time.Duration) (To, error) {
	if wrapTTL < 0 {
		return To{}, errs.New(errs.InvalidArgument, "wrap_ttl_seconds must not be negative")
	}
	if wrapTTL > 0 {
		return To{WrapTTL: wrapTTL}, nil
	}
	sl, err := c.recipientSealer(ctx, ref)
	if err != nil {
		return To{}, err
	}
	return To{Recipient: sl.Recipient(), sealer: sl}, nil
}

// Deliver seals s to to.Recipient or wraps it for to.WrapTTL. On failure it
// runs undo (revoking what was minted), so no secret exists that nobody
// can receive. It clears s.Data either way.
func (c *Core) Deliver(ctx context.Context, to To, s Secret, undo func(context.Context) error) (*Delivery, error) {
	defer clear(s.Data)
	var (
		d   = &Delivery{}
		err error
	)
	if to.Wrapped() {
		d.WrapToken, d.WrapExpires, err = c.wrap(ctx, s, to.WrapTTL)
	} else {
		d.Envelope, err = to.seal(s.BindingID, s.Data)
	}
	if err == nil {
		return d, nil
	}
	if undo != nil {
		if uerr := undo(context.WithoutCancel(ctx)); uerr != nil {
			c.log.ErrorContext(ctx, "undo after a failed delivery failed: a secret may exist that nobody received",
				"binding", s.BindingID, "err", uerr)
		}
	}
	return nil, errs.Wrap(errs.KindOf(err), "deliver secret", err)
}

// seal seals data to the destination's recipient, with the encapsulation
// Destination prepared when there is one.
func (t To) seal(id string, data map[string]string) ([]byte, error) {
	if t.sealer == nil || !t.sealer.SealsTo(t.Recipient) {
		return sealTo(t.Recipient, id, data)
	}
	env, err := t.sealer.SealData(id, data)
	if err != nil {
		return nil, err
	}
	return env.MarshalBinary()
}

// sealTo seals data to rcpt bound to id and returns the wire form.
func sealTo(rcpt envelope.Recipient, id string, data map[string]string) ([]byte, error) {
	env, err := envelope.SealData(rcpt, id, data)
	if err != nil {
		return nil, err
	}
	return env.MarshalBinary()
}
