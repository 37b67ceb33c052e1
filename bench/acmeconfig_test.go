package bench

import (
	"testing"

	"github.com/sigil-ca/sigil/config"
)

// TestACMEServerConfig: the file the acme scenario gives the dev server
// loads through the server's own strict loader and turns every ACME rate
// limit off (a negative per_second), so one IP's clients are not throttled.
func TestACMEServerConfig(t *testing.T) {
	path, err := WriteACMEServerConfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadFile(path, config.Default())
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]config.ACMERate{
		"new_nonce":   cfg.ACME.RateLimits.NewNonce,
		"new_account": cfg.ACME.RateLimits.NewAccount,
		"new_order":   cfg.ACME.RateLimits.NewOrder,
	} {
		if r.PerSecond >= 0 {
			t.Errorf("%s: per_second = %v, want < 0 (off)", name, r.PerSecond)
		}
	}
}
