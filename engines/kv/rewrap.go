package kv

import (
	"context"

	"github.com/sigil-ca/sigil/storage"
)

// Rewrapper lists every kv ciphertext (values and custom metadata, sealed
// under SealKind) for the barrier's rewrap registry.
func Rewrapper(st storage.KV) rewrapper { return rewrapper{st} }

type rewrapper struct{ st storage.KV }

func (r rewrapper) EachSealed(ctx context.Context, visit func(id string, sealed []byte, swap func(ctx context.Context, old, new []byte) error) error) error {
	return r.st.EachSealed(ctx, func(mount, path string, version int, sealed []byte) error {
		if version == 0 {
			return visit(CustomSealID(mount, path), sealed, func(ctx context.Context, old, new []byte) error {
				return storage.Superseded(r.st.ReplaceCustom(ctx, mount, path, old, new))
			})
		}
		return visit(SealID(mount, path, version), sealed, func(ctx context.Context, old, new []byte) error {
			return storage.Superseded(r.st.ReplaceSealed(ctx, mount, path, version, old, new))
		})
	})
}
