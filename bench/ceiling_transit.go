package bench

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"time"
)

// TransitPlaintextSize is the payload of the transit ceiling and scenario.
const TransitPlaintextSize = 1024

// TransitCeiling is the transit-encrypt scenario's floor: AES-256-GCM seals
// of a 1 KiB plaintext with a fresh random 96-bit nonce each (what an
// encrypt operation must do at least), in process, from n goroutines for d.
// Each goroutine has its own key and buffers, so nothing is shared.
func TransitCeiling(ctx context.Context, n int, d time.Duration) (Ceiling, error) {
	n = max(n, 1)
	type state struct {
		aead      cipher.AEAD
		pt, nonce []byte
		out       []byte
	}
	st := make([]state, n)
	for i := range st {
		key := make([]byte, 32)
		_, _ = rand.Read(key) // crypto/rand.Read never fails
		block, err := aes.NewCipher(key)
		if err != nil {
			return Ceiling{}, fmt.Errorf("ceiling: %w", err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return Ceiling{}, fmt.Errorf("ceiling: %w", err)
		}
		pt := make([]byte, TransitPlaintextSize)
		_, _ = rand.Read(pt)
		st[i] = state{aead: aead, pt: pt, nonce: make([]byte, aead.NonceSize()),
			out: make([]byte, 0, TransitPlaintextSize+aead.Overhead())}
	}
	name := fmt.Sprintf("transit: AES-256-GCM seal, 1 KiB, random nonce, %d goroutines", n)
	return measureLoop(ctx, name, n, d, func(w int, _ int64) error {
		s := &st[w]
		_, _ = rand.Read(s.nonce)
		s.out = s.aead.Seal(s.out[:0], s.nonce, s.pt, nil)
		return nil
	})
}
