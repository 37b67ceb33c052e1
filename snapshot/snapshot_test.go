package snapshot_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sigil-ca/sigil/internal/flock"
	"github.com/sigil-ca/sigil/snapshot"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

// saveFrom opens a real store in dir, writes a marker setting and returns
// a snapshot of it.
func saveFrom(t *testing.T, dir, marker string) []byte {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(dir, snapshot.DBFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Settings().Put(ctx, "deploy-test-marker", []byte(marker)); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	hdr, err := snapshot.Save(ctx, st.(interface{ DB() *sql.DB }).DB(), dir, "test", &buf)
	if err != nil {
		t.Fatal(err)
	}
	if hdr.SchemaVersion == 0 || hdr.Size == 0 {
		t.Fatalf("header %+v", hdr)
	}
	return buf.Bytes()
}

// markerIn reads the marker setting of the database in dir.
func markerIn(t *testing.T, dir string) string {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(dir, snapshot.DBFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	v, err := st.Settings().Get(ctx, "deploy-test-marker")
	if err != nil {
		t.Fatal(err)
	}
	return string(v)
}

// TestRestoreKeepsThePreviousDatabase: restoring over a data directory
// moves its database aside (never deletes it) and installs the snapshot.
func TestRestoreKeepsThePreviousDatabase(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	snap := filepath.Join(t.TempDir(), "a.snap")
	if err := os.WriteFile(snap, saveFrom(t, src, "from-snapshot"), 0o600); err != nil {
		t.Fatal(err)
	}
	saveFrom(t, dst, "previous")
	res, err := snapshot.Restore(context.Background(), snap, dst)
	if err != nil {
		t.Fatal(err)
	}
	if got := markerIn(t, dst); got != "from-snapshot" {
		t.Fatalf("restored marker %q", got)
	}
	if res.Previous == "" {
		t.Fatal("no previous database reported")
	}
	prevDir := t.TempDir()
	if err := os.Rename(res.Previous, filepath.Join(prevDir, snapshot.DBFile)); err != nil {
		t.Fatal(err)
	}
	for _, sfx := range []string{"-wal", "-shm"} {
		_ = os.Rename(res.Previous+sfx, filepath.Join(prevDir, snapshot.DBFile+sfx))
	}
	if got := markerIn(t, prevDir); got != "previous" {
		t.Fatalf("the kept database holds %q", got)
	}
}

// TestRestoreRefusesBadInput: every damaged or foreign input is refused
// with ErrNotSnapshot, and the data directory keeps its database.
func TestRestoreRefusesBadInput(t *testing.T) {
	good := saveFrom(t, t.TempDir(), "x")
	// A valid header over a SQLite file that is not Sigil's.
	other := filepath.Join(t.TempDir(), "other.db")
	db, err := sql.Open("sqlite", other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	var foreign bytes.Buffer
	if _, err := snapshot.Save(context.Background(), db, t.TempDir(), "test", &foreign); err == nil {
		t.Fatal("Save of a database without goose_db_version succeeded")
	}
	db.Close()
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 1; return b }
	hdrEnd := bytes.IndexByte(good[len(snapshot.Magic):], '\n') + len(snapshot.Magic) + 1
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"bad magic", flip(0)},
		{"header damaged", flip(len(snapshot.Magic) + 2)},
		{"data byte flipped", flip(hdrEnd + 5000)},
		{"truncated", good[:len(good)-1]},
		{"trailing bytes", append(bytes.Clone(good), 0)},
		{"header only", good[:hdrEnd]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := t.TempDir()
			saveFrom(t, dst, "keep-me")
			snap := filepath.Join(t.TempDir(), "bad.snap")
			if err := os.WriteFile(snap, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := snapshot.Restore(context.Background(), snap, dst); !errors.Is(err, snapshot.ErrNotSnapshot) {
				t.Fatalf("restore: %v, want ErrNotSnapshot", err)
			}
			if got := markerIn(t, dst); got != "keep-me" {
				t.Fatalf("the data directory now holds %q", got)
			}
			if _, err := os.Stat(filepath.Join(dst, snapshot.DBFile+".restoring")); err == nil {
				t.Fatal("staging file left behind")
			}
		})
	}
}

// TestRestoreRefusesALockedDataDirectory: a directory a server holds is
// not touched.
func TestRestoreRefusesALockedDataDirectory(t *testing.T) {
	snap := filepath.Join(t.TempDir(), "a.snap")
	if err := os.WriteFile(snap, saveFrom(t, t.TempDir(), "x"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	l, err := flock.TryAcquire(filepath.Join(dst, "sigil.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if _, err := snapshot.Restore(context.Background(), snap, dst); err == nil {
		t.Fatal("restore into a locked data directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(dst, snapshot.DBFile)); err == nil {
		t.Fatal("a database was written into the locked directory")
	}
}
