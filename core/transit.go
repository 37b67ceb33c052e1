package core

import (
	"context"
	"encoding/base64"
	"strconv"

	"github.com/sigil-ca/sigil/engines"
)

// Transit returns mount's transit engine.
func (c *Core) Transit(ctx context.Context, mount string) (engines.Transit, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	e, err := engines.Capability[engines.Transit](ctx, u.Mounts, mount, "transit operations need a transit mount")
	return e, OpError("transit", err)
}

// TransitEnvelopeID binds transit envelopes to the key they came from.
func TransitEnvelopeID(mount, name string) string { return "transit:" + mount + "/" + name }

// Decrypt decrypts a batch with key name of mount and delivers the
// plaintexts sealed to ref, keyed by item index; items that failed carry
// their error in the results and nothing in the envelope.
func (c *Core) Decrypt(ctx context.Context, mount, name string, items []engines.TransitItem, ref *RecipientRef) ([]engines.TransitResult, *Delivery, error) {
	e, err := c.Transit(ctx, mount)
	if err != nil {
		return nil, nil, err
	}
	var rs []engines.TransitResult
	d, err := c.deliverRead(ctx, ref, TransitEnvelopeID(mount, name), func() (map[string]string, error) {
		if rs, err = e.Decrypt(ctx, name, items); err != nil {
			return nil, OpError("decrypt", err)
		}
		data := make(map[string]string, len(rs))
		for i, r := range rs {
			if r.Err == nil {
				data[strconv.Itoa(i)] = base64.StdEncoding.EncodeToString(r.Plaintext)
				clear(r.Plaintext)
			}
		}
		return data, nil
	})
	return rs, d, err
}

// DataKey makes a data key under key name of mount: the key wrapped by it
// and, unless wrappedOnly, the plaintext key delivered sealed to ref.
func (c *Core) DataKey(ctx context.Context, mount, name string, bits int, ad []byte, wrappedOnly bool, ref *RecipientRef) (string, *Delivery, error) {
	e, err := c.Transit(ctx, mount)
	if err != nil {
		return "", nil, err
	}
	var wrapped string
	mint := func() (map[string]string, error) {
		pt, w, err := e.DataKey(ctx, name, bits, ad)
		if err != nil {
			return nil, OpError("data key", err)
		}
		defer clear(pt)
		wrapped = w
		return map[string]string{"plaintext": base64.StdEncoding.EncodeToString(pt)}, nil
	}
	if wrappedOnly {
		data, err := mint()
		clear(data)
		return wrapped, nil, err
	}
	d, err := c.deliverRead(ctx, ref, TransitEnvelopeID(mount, name), mint)
	return wrapped, d, err
}
