// Package snapshot writes and restores backups of Sigil's embedded
// (SQLite) store.
//
// A snapshot file is a magic line, one JSON header line and the bytes of a
// consistent copy of the database (SQLite's VACUUM INTO, which reads one
// transaction and does not block writers). The header carries the
// database's size and SHA-256, so a truncated or corrupted file is refused
// before anything on disk is replaced; restore also opens the copy and runs
// SQLite's integrity check and looks for Sigil's tables.
//
// The database is copied as the barrier left it: secrets, key blobs and
// the keyring stay sealed under the master key, so a snapshot is no more
// sensitive than the data directory itself and a restored node must be
// unsealed with the original shares (or HSM) before it serves anything.
// The SHA-256 detects damage, not tampering; what the barrier seals is
// authenticated by its AEAD when it is opened.
package snapshot

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/sigil-ca/sigil/internal/flock"
)

// Magic is the first line of every snapshot file.
const Magic = "SIGIL-SNAPSHOT\n"

// Format is the version of the file layout this package writes and reads.
const Format = 1

// DBFile is the embedded database's name inside a data directory; it must
// match the server's.
const DBFile = "sigil.db"

// maxHeader bounds the JSON header line.
const maxHeader = 4 << 10

// requiredTables are tables every Sigil database has; a SQLite file
// without them is not a Sigil snapshot.
var requiredTables = []string{"settings", "keyring", "issuers", "certificates", "goose_db_version"}

// ErrNotSnapshot is returned for a file that is not a readable Sigil
// snapshot (wrong magic, bad header, wrong size or hash, not a Sigil
// database).
var ErrNotSnapshot = errors.New("not a valid Sigil snapshot")

// Header describes a snapshot.
type Header struct {
	Format    int       `json:"format"`
	Backend   string    `json:"backend"`
	CreatedAt time.Time `json:"created_at"`
	// Version is the Sigil version that wrote it.
	Version string `json:"sigil_version"`
	// SchemaVersion is the newest storage migration applied.
	SchemaVersion int64 `json:"schema_version"`
	// Size and SHA256 are the database bytes that follow the header.
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Save writes a snapshot of db (an open SQLite database) to w. The
// consistent copy is first written to a private temporary directory under
// tmpDir (the data directory: same disk, same protection) and removed
// afterwards.
func Save(ctx context.Context, db *sql.DB, tmpDir, version string, w io.Writer) (Header, error) {
	dir, err := os.MkdirTemp(tmpDir, ".snapshot-")
	if err != nil {
		return Header{}, fmt.Errorf("snapshot: temporary directory: %w", err)
	}
	defer os.RemoveAll(dir)
	copyPath := filepath.Join(dir, "copy.db")
	// VACUUM INTO takes a file name; SQL quoting is enough, as the path is
	// ours (MkdirTemp) and only single quotes need escaping.
	if _, err := db.ExecContext(ctx, "VACUUM INTO '"+strings.ReplaceAll(copyPath, "'", "''")+"'"); err != nil {
		return Header{}, fmt.Errorf("snapshot: copy the database: %w", err)
	}
	f, err := os.Open(copyPath)
	if err != nil {
		return Header{}, fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return Header{}, fmt.Errorf("snapshot: hash the copy: %w", err)
	}
	schema, err := schemaVersion(ctx, db)
	if err != nil {
		return Header{}, err
	}
	hdr := Header{Format: Format, Backend: "sqlite", CreatedAt: time.Now().UTC().Truncate(time.Second), Version: version,
		SchemaVersion: schema, Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}
	line, err := json.Marshal(hdr)
	if err != nil {
		return Header{}, fmt.Errorf("snapshot: header: %w", err)
	}
	if _, err := io.WriteString(w, Magic+string(line)+"\n"); err != nil {
		return Header{}, fmt.Errorf("snapshot: write: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return Header{}, fmt.Errorf("snapshot: %w", err)
	}
	if n, err := io.Copy(w, f); err != nil || n != size {
		return Header{}, fmt.Errorf("snapshot: write %d of %d bytes: %w", n, size, err)
	}
	return hdr, nil
}

func schemaVersion(ctx context.Context, db *sql.DB) (int64, error) {
	var v sql.NullInt64
	if err := db.QueryRowContext(ctx, "SELECT MAX(version_id) FROM goose_db_version WHERE is_applied").Scan(&v); err != nil {
		return 0, fmt.Errorf("snapshot: schema version: %w", err)
	}
	return v.Int64, nil
}

// extract reads a snapshot from r into a new file dst (mode 0600, which
// must not exist) and checks it: magic, header, size, SHA-256, nothing
// after the data, SQLite's integrity check and Sigil's tables. dst is
// removed on error.
func extract(ctx context.Context, r io.Reader, dst string) (_ Header, err error) {
	br := bufio.NewReader(r)
	magic := make([]byte, len(Magic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != Magic {
		return Header{}, fmt.Errorf("%w: the file does not start with %q (was it written by `sigil operator snapshot save`?)", ErrNotSnapshot, strings.TrimSpace(Magic))
	}
	line, err := readLine(br, maxHeader)
	if err != nil {
		return Header{}, fmt.Errorf("%w: header: %w", ErrNotSnapshot, err)
	}
	var hdr Header
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&hdr); err != nil {
		return Header{}, fmt.Errorf("%w: header: %w", ErrNotSnapshot, err)
	}
	want, err := hex.DecodeString(hdr.SHA256)
	switch {
	case hdr.Format != Format:
		return Header{}, fmt.Errorf("%w: format %d, this sigil reads format %d", ErrNotSnapshot, hdr.Format, Format)
	case hdr.Backend != "sqlite":
		return Header{}, fmt.Errorf("%w: backend %q", ErrNotSnapshot, hdr.Backend)
	case err != nil || len(want) != sha256.Size:
		return Header{}, fmt.Errorf("%w: header sha256 %q is not a SHA-256", ErrNotSnapshot, hdr.SHA256)
	case hdr.Size <= 0:
		return Header{}, fmt.Errorf("%w: header size %d", ErrNotSnapshot, hdr.Size)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Header{}, fmt.Errorf("snapshot: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(dst)
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(br, hdr.Size))
	if err != nil {
		return Header{}, fmt.Errorf("snapshot: read: %w", err)
	}
	if n != hdr.Size {
		return Header{}, fmt.Errorf("%w: truncated: %d of %d database bytes", ErrNotSnapshot, n, hdr.Size)
	}
	if extra, _ := br.Read(make([]byte, 1)); extra != 0 {
		return Header{}, fmt.Errorf("%w: data after the %d database bytes the header announces", ErrNotSnapshot, hdr.Size)
	}
	if subtle.ConstantTimeCompare(h.Sum(nil), want) != 1 {
		return Header{}, fmt.Errorf("%w: SHA-256 mismatch: the file is damaged", ErrNotSnapshot)
	}
	if err := f.Sync(); err != nil {
		return Header{}, fmt.Errorf("snapshot: %w", err)
	}
	if err := f.Close(); err != nil {
		return Header{}, fmt.Errorf("snapshot: %w", err)
	}
	if err := checkDatabase(ctx, dst); err != nil {
		return Header{}, err
	}
	return hdr, nil
}

func readLine(br *bufio.Reader, limit int) (string, error) {
	var b strings.Builder
	for b.Len() <= limit {
		c, err := br.ReadByte()
		if err != nil {
			return "", fmt.Errorf("no end of line: %w", err)
		}
		if c == '\n' {
			return b.String(), nil
		}
		b.WriteByte(c)
	}
	return "", fmt.Errorf("longer than %d bytes", limit)
}

// checkDatabase opens path read-only and checks it is a sound Sigil
// database.
func checkDatabase(ctx context.Context, path string) error {
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?mode=ro&_pragma=query_only(1)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return fmt.Errorf("snapshot: open the copy: %w", err)
	}
	defer db.Close()
	var result string
	if err := db.QueryRowContext(ctx, "PRAGMA integrity_check").Scan(&result); err != nil {
		return fmt.Errorf("%w: not a SQLite database: %w", ErrNotSnapshot, err)
	}
	if result != "ok" {
		return fmt.Errorf("%w: SQLite integrity check: %s", ErrNotSnapshot, result)
	}
	for _, t := range requiredTables {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", t).Scan(&n); err != nil {
			return fmt.Errorf("snapshot: check tables: %w", err)
		}
		if n != 1 {
			return fmt.Errorf("%w: the database has no %s table", ErrNotSnapshot, t)
		}
	}
	return nil
}

// Verify checks the snapshot file at path completely (as restore would)
// without changing anything, and returns its header.
func Verify(ctx context.Context, path string) (Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return Header{}, fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()
	dir, err := os.MkdirTemp("", "sigil-snapshot-verify-")
	if err != nil {
		return Header{}, fmt.Errorf("snapshot: %w", err)
	}
	defer os.RemoveAll(dir)
	return extract(ctx, f, filepath.Join(dir, DBFile))
}

// Restored reports what Restore did.
type Restored struct {
	Header Header
	// DB is the restored database; Previous, when set, is where the
	// database it replaced (and its -wal/-shm files) now are.
	DB       string
	Previous string
}

// Restore installs the snapshot at path as the embedded database of the
// data directory dataDir, which no server may be using: it takes the
// server's data-directory lock for the whole operation. The snapshot is
// extracted and checked beside the database first; only then is an
// existing database (with its -wal and -shm files) renamed aside to
// sigil.db.pre-restore-TIME, never deleted, and the new one renamed into
// place. A failure before that last step leaves the data directory as it
// was.
func Restore(ctx context.Context, path, dataDir string) (Restored, error) {
	in, err := os.Open(path)
	if err != nil {
		return Restored{}, fmt.Errorf("snapshot: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return Restored{}, fmt.Errorf("snapshot: data directory: %w", err)
	}
	lock, err := flock.TryAcquire(filepath.Join(dataDir, "sigil.lock"))
	if errors.Is(err, flock.ErrLocked) {
		return Restored{}, fmt.Errorf("snapshot: data directory %s is in use by a running sigil server: stop it first (restore replaces the database of a stopped node)", dataDir)
	}
	if err != nil {
		return Restored{}, fmt.Errorf("snapshot: lock %s: %w", dataDir, err)
	}
	defer lock.Release()

	dbPath := filepath.Join(dataDir, DBFile)
	staging := dbPath + ".restoring"
	// A staging file left by an interrupted restore is ours to replace.
	if err := os.Remove(staging); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Restored{}, fmt.Errorf("snapshot: %w", err)
	}
	hdr, err := extract(ctx, in, staging)
	if err != nil {
		return Restored{}, err
	}
	out := Restored{Header: hdr, DB: dbPath}
	if _, err := os.Stat(dbPath); err == nil {
		prev := dbPath + ".pre-restore-" + time.Now().UTC().Format("20060102T150405Z")
		// The database first: once it has moved, its -wal and -shm files
		// (which belong to it) follow under the same suffix.
		if err := os.Rename(dbPath, prev); err != nil {
			os.Remove(staging)
			return Restored{}, fmt.Errorf("snapshot: move the current database aside: %w", err)
		}
		for _, sfx := range []string{"-wal", "-shm"} {
			if err := os.Rename(dbPath+sfx, prev+sfx); err != nil && !errors.Is(err, os.ErrNotExist) {
				return Restored{}, fmt.Errorf("snapshot: move %s aside (the old database is at %s): %w", dbPath+sfx, prev, err)
			}
		}
		out.Previous = prev
	} else if !errors.Is(err, os.ErrNotExist) {
		os.Remove(staging)
		return Restored{}, fmt.Errorf("snapshot: %w", err)
	}
	if err := os.Rename(staging, dbPath); err != nil {
		return Restored{}, fmt.Errorf("snapshot: install %s: %w", dbPath, err)
	}
	if d, err := os.Open(dataDir); err == nil {
		// The renames are durable only once the directory is synced.
		_ = d.Sync()
		d.Close()
	}
	return out, nil
}
