package main

import (
	"crypto/hpke"
	"fmt"

	"github.com/sigil-ca/sigil/envelope"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// oneCallKey is an X25519 key made for one call: the server seals the
// secret of its response to it, so the secret crosses the wire only inside
// an envelope that this process alone can open.
type oneCallKey struct {
	priv      hpke.PrivateKey
	Recipient *sigilv1.Recipient
}

func newOneCallKey() (*oneCallKey, error) {
	priv, r, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
	if err != nil {
		return nil, err
	}
	return &oneCallKey{priv: priv, Recipient: &sigilv1.Recipient{Kem: uint32(r.KEM), PublicKey: r.PublicKey}}, nil
}

// open opens a sealed response bound to id; what names the secret in errors.
func (k *oneCallKey) open(sealed []byte, id, what string) (map[string]string, error) {
	var en envelope.Envelope
	if err := en.UnmarshalBinary(sealed); err != nil {
		return nil, fmt.Errorf("server sent a malformed envelope for the %s: %w", what, err)
	}
	data, err := envelope.OpenData(k.priv, &en, id)
	if err != nil {
		return nil, fmt.Errorf("open the %s: %w", what, err)
	}
	return data, nil
}
