// Package adapt lets the bottom layers use storage without importing it:
// the barrier keeps its keyring, and the software keystore its sealed keys,
// in storage repositories through these adapters, which map storage's
// errors onto the ones those packages define.
package adapt

import (
	"context"
	"errors"
	"fmt"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/storage"
)

// Keyring adapts storage.Keyring to barrier.KeyringStore.
func Keyring(r storage.Keyring) barrier.KeyringStore { return keyring{r} }

type keyring struct{ r storage.Keyring }

func (a keyring) Load(ctx context.Context) ([]byte, int64, error) {
	b, v, err := a.r.Get(ctx)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, 0, barrier.ErrNotFound
	}
	return b, v, err
}

func (a keyring) Save(ctx context.Context, sealed []byte, prev int64) (int64, error) {
	v, err := a.r.Put(ctx, sealed, prev)
	if errors.Is(err, storage.ErrConflict) {
		return 0, barrier.ErrConflict
	}
	return v, err
}

// Blobs adapts storage.KeyBlobs to hsm.BlobStore.
func Blobs(r storage.KeyBlobs) hsm.BlobStore { return blobs{r} }

type blobs struct{ r storage.KeyBlobs }

func (a blobs) PutBlob(ctx context.Context, b hsm.Blob) error {
	err := a.r.Put(ctx, &storage.KeyBlob{Name: b.Name, Type: string(b.Type), PublicDER: b.PublicDER, Sealed: b.Sealed, CreatedAt: b.CreatedAt})
	if errors.Is(err, storage.ErrConflict) {
		return fmt.Errorf("key %q: %w", b.Name, hsm.ErrKeyExists)
	}
	return err
}

func (a blobs) GetBlob(ctx context.Context, name string) (hsm.Blob, error) {
	k, err := a.r.Get(ctx, name)
	if errors.Is(err, storage.ErrNotFound) {
		return hsm.Blob{}, fmt.Errorf("key %q: %w", name, hsm.ErrKeyNotFound)
	}
	if err != nil {
		return hsm.Blob{}, err
	}
	return blobFrom(k), nil
}

func (a blobs) ListBlobs(ctx context.Context) ([]hsm.Blob, error) {
	ks, err := a.r.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]hsm.Blob, 0, len(ks))
	for _, k := range ks {
		out = append(out, blobFrom(k))
	}
	return out, nil
}

func (a blobs) DeleteBlob(ctx context.Context, name string) error {
	err := a.r.Delete(ctx, name)
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("key %q: %w", name, hsm.ErrKeyNotFound)
	}
	return err
}

func blobFrom(k *storage.KeyBlob) hsm.Blob {
	return hsm.Blob{Name: k.Name, Type: hsm.KeyType(k.Type), PublicDER: k.PublicDER, Sealed: k.Sealed, CreatedAt: k.CreatedAt}
}
