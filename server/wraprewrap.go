package server

import (
	"strings"

	"github.com/sigil-ca/sigil/storage"
)

// wrapRewrapper lists wrapped responses (sealed under wrapKind, each bound
// to its wrapping token's id), for the barrier's rewrap registry.
func wrapRewrapper(s storage.Settings) storage.SealedSettings {
	return storage.SealedSettings{Settings: s, Prefix: wrapSettingPx, ID: func(key string) string {
		return strings.TrimPrefix(key, wrapSettingPx)
	}}
}
