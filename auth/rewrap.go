package auth

import "github.com/sigil-ca/sigil/storage"

// SettingsRewrapper lists the settings auth keeps sealed under SettingKind,
// for the barrier's rewrap registry.
func SettingsRewrapper(s storage.Settings) storage.SealedSettings {
	return storage.SealedSettings{Settings: s, Keys: SealedSettings()}
}
