package hsm

import "context"

// SealedBlobStore is what rewrapping the soft keystore needs of its store.
type SealedBlobStore interface {
	ListBlobs(ctx context.Context) ([]Blob, error)
	// ReplaceSealed swaps a blob's sealed bytes if they still equal old. It
	// returns nil, not an error, when they changed or the key vanished
	// meanwhile (the wiring layer maps the store's errors so).
	ReplaceSealed(ctx context.Context, name string, old, new []byte) error
}

// SoftKeyRewrapper lists the sealed software keys (SoftKeyKind), for the
// barrier's rewrap registry.
func SoftKeyRewrapper(s SealedBlobStore) softKeyRewrapper { return softKeyRewrapper{s} }

type softKeyRewrapper struct{ s SealedBlobStore }

func (r softKeyRewrapper) EachSealed(ctx context.Context, visit func(id string, sealed []byte, swap func(ctx context.Context, old, new []byte) error) error) error {
	blobs, err := r.s.ListBlobs(ctx)
	if err != nil {
		return err
	}
	for _, b := range blobs {
		name := b.Name
		if err := visit(name, b.Sealed, func(ctx context.Context, old, new []byte) error {
			return r.s.ReplaceSealed(ctx, name, old, new)
		}); err != nil {
			return err
		}
	}
	return nil
}
