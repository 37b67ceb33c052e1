package lease

import (
	"context"
	"fmt"

	"github.com/sigil-ca/sigil/storage"
)

// Active returns a lease that is active and unexpired, with its opened
// revocation data (for engines that check a presented secret against what
// they recorded, such as token introspection). ErrNotFound if there is no
// such lease, ErrNotActive if it is revoked, irrevocable or expired. The
// caller must clear the revocation data when done.
func (m *Manager) Active(ctx context.Context, id string) (*Lease, []byte, error) {
	l, err := m.get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if l.State != storage.LeaseActive || !m.now().Before(l.ExpiresAt) {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotActive, id)
	}
	rev, err := m.cfg.Sealer.Open(ctx, SealKind, l.ID, l.SealedRevocation)
	if err != nil {
		return nil, nil, fmt.Errorf("lease: open revocation data of %s: %w", id, err)
	}
	return view(l), rev, nil
}
