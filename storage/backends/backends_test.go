package backends_test

import (
	"database/sql"
	"testing"

	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/storage/backends"
)

// TestStorageSync: storage_sync reaches the embedded database.
func TestStorageSync(t *testing.T) {
	for _, tt := range []struct {
		sync string
		want int
	}{{"", 1}, {config.SyncNormal, 1}, {config.SyncFull, 2}} {
		t.Run("sync="+tt.sync, func(t *testing.T) {
			cfg := config.Default()
			cfg.DataDir, cfg.StorageSync = t.TempDir(), tt.sync
			st, fresh, err := backends.Open(t.Context(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if !fresh {
				t.Error("a new data directory not reported fresh")
			}
			var got int
			if err := st.(interface{ DB() *sql.DB }).DB().QueryRowContext(t.Context(), `PRAGMA synchronous`).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("synchronous = %d, want %d", got, tt.want)
			}
		})
	}
}
