package ra

import (
	"bytes"
	"context"
	"errors"

	"github.com/sigil-ca/sigil/storage"
)

// EABSealKind is the barrier kind EAB HMAC keys are sealed under.
const EABSealKind = sealKindEAB

// NewEABRewrapper lists the sealed EAB HMAC keys, for the barrier's
// rewrap registry.
func NewEABRewrapper(s storage.ACME) EABRewrapper { return EABRewrapper{s} }

// EABRewrapper visits the sealed EAB HMAC keys.
type EABRewrapper struct{ s storage.ACME }

func (r EABRewrapper) EachSealed(ctx context.Context, visit func(id string, sealed []byte, swap func(ctx context.Context, old, new []byte) error) error) error {
	f := storage.ACMEFilter{Kind: kindEAB, Limit: 1000}
	for {
		page, err := r.s.List(ctx, f)
		if err != nil {
			return err
		}
		for _, o := range page {
			k, err := decode[eabKey](o)
			if err != nil {
				return err
			}
			if err := visit(o.ID, k.SealedHMAC, func(ctx context.Context, old, new []byte) error {
				return r.swap(ctx, o, old, new)
			}); err != nil {
				return err
			}
		}
		if len(page) < f.Limit {
			return nil
		}
		f.After = page[len(page)-1].ID
	}
}

// swap replaces the key's sealed HMAC if it still equals old. The object's
// version guards the update; a version that moved on for another reason
// (the key was bound) leaves the old HMAC in place, so it reloads and tries
// again rather than calling that superseded.
func (r EABRewrapper) swap(ctx context.Context, o *storage.ACMEObject, old, new []byte) error {
	for range 5 {
		k, err := decode[eabKey](o)
		if err != nil {
			return err
		}
		if !bytes.Equal(k.SealedHMAC, old) {
			return nil
		}
		k.SealedHMAC = new
		if o.Data, err = encode(k); err != nil {
			return err
		}
		err = r.s.Update(ctx, o)
		if !errors.Is(err, storage.ErrConflict) {
			return storage.Superseded(err)
		}
		if o, err = r.s.Get(ctx, kindEAB, o.ID); err != nil {
			return storage.Superseded(err)
		}
	}
	return errors.New("acme: eab key kept changing during rewrap")
}
