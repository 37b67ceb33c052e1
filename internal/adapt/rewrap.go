package adapt

import (
	"context"

	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/storage"
)

// SealedBlobs adapts storage.KeyBlobs to hsm.SealedBlobStore, for rewrap.
func SealedBlobs(r storage.KeyBlobs) hsm.SealedBlobStore { return blobs{r} }

// ReplaceSealed reports a lost compare-and-swap as nil, as rewrap expects.
func (a blobs) ReplaceSealed(ctx context.Context, name string, old, new []byte) error {
	return storage.Superseded(a.r.ReplaceSealed(ctx, name, old, new))
}
