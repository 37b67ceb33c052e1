package engines

import (
	"context"

	"github.com/sigil-ca/sigil/storage"
)

// DataRewrapper lists engine data (sealed under DataSealKind), for the
// barrier's rewrap registry.
func DataRewrapper(s storage.Settings) storage.SealedSettings {
	return storage.SealedSettings{Settings: s, Prefix: DataSettingPrefix, ID: DataSealID}
}

// MountRewrapper lists mount documents (sealed under SealKind), for the
// barrier's rewrap registry.
func MountRewrapper(m storage.Mounts) mountRewrapper { return mountRewrapper{m} }

type mountRewrapper struct{ m storage.Mounts }

func (r mountRewrapper) EachSealed(ctx context.Context, visit func(id string, sealed []byte, swap func(ctx context.Context, old, new []byte) error) error) error {
	mounts, err := r.m.List(ctx)
	if err != nil {
		return err
	}
	for _, mt := range mounts {
		if len(mt.SealedConfig) == 0 {
			continue
		}
		path := mt.Path
		if err := visit(path, mt.SealedConfig, func(ctx context.Context, old, new []byte) error {
			return storage.Superseded(r.m.ReplaceSealed(ctx, path, old, new))
		}); err != nil {
			return err
		}
	}
	return nil
}
