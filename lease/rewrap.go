package lease

import (
	"context"

	"github.com/sigil-ca/sigil/storage"
)

// Rewrapper lists the leases' sealed revocation data (SealKind), a page at
// a time, for the barrier's rewrap registry.
func Rewrapper(l storage.Leases) rewrapper { return rewrapper{l} }

type rewrapper struct{ l storage.Leases }

func (r rewrapper) EachSealed(ctx context.Context, visit func(id string, sealed []byte, swap func(ctx context.Context, old, new []byte) error) error) error {
	// Leases are paged, never loaded all at once.
	for after := ""; ; {
		page, next, err := r.l.List(ctx, storage.LeaseFilter{After: after, Limit: 1000})
		if err != nil {
			return err
		}
		for _, l := range page {
			if len(l.SealedRevocation) == 0 {
				continue
			}
			id := l.ID
			if err := visit(id, l.SealedRevocation, func(ctx context.Context, old, new []byte) error {
				return storage.Superseded(r.l.ReplaceSealed(ctx, id, old, new))
			}); err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
		after = next
	}
}
