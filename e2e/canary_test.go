package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, to read the server's file

	"github.com/sigil-ca/sigil/internal/testharness" // also registers the "pgx" driver
)

// openSQLite opens the server's database file with its own connection.
func openSQLite(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// pkcs8Markers are byte strings that begin the body of every PKCS#8
// PrivateKeyInfo of a kind Sigil creates: INTEGER version 0 followed by the
// AlgorithmIdentifier. A SubjectPublicKeyInfo (which may be stored in
// clear) has the same AlgorithmIdentifier but no version before it, so
// these match private keys only.
var pkcs8Markers = map[string][]byte{
	"PKCS#8 EC private key":      mustHex("020100301306072a8648ce3d0201"),
	"PKCS#8 RSA private key":     mustHex("020100300d06092a864886f70d0101010500"),
	"PKCS#8 Ed25519 private key": mustHex("020100300506032b6570"),
	"SEC 1 EC private key":       mustHex("0201010420"), // ECPrivateKey: version 1, OCTET STRING of 32 bytes
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// needle is one thing that must not be found.
type needle struct {
	what  string
	bytes []byte
}

// secretNeedles returns the forms in which a secret could leak: raw, hex
// (both cases: PostgreSQL dumps bytea as lower-case hex) and base64.
func secretNeedles(what string, secret []byte) []needle {
	return []needle{
		{what + " (raw)", secret},
		{what + " (hex)", []byte(hex.EncodeToString(secret))},
		{what + " (HEX)", []byte(strings.ToUpper(hex.EncodeToString(secret)))},
		{what + " (base64)", []byte(base64.StdEncoding.EncodeToString(secret))},
		{what + " (base64url)", []byte(base64.RawURLEncoding.EncodeToString(secret))},
	}
}

// scan reports every needle found in data.
func scan(t *testing.T, where string, data []byte, needles []needle) {
	t.Helper()
	for _, n := range needles {
		if len(n.bytes) == 0 {
			t.Fatalf("empty needle %s", n.what)
		}
		if i := bytes.Index(data, n.bytes); i >= 0 {
			t.Errorf("%s contains %s at offset %d", where, n.what, i)
		}
	}
}

// scanDir scans every regular file under dir except the designated secret
// files, and returns how many files it read.
func scanDir(t *testing.T, dir string, needles []needle, except ...string) int {
	t.Helper()
	files := 0
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || slices.Contains(except, e.Name()) {
			return err
		}
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			// SQLite removed it (-wal, -shm) between listing and reading.
			return nil
		} else if err != nil {
			return err
		}
		files++
		scan(t, path, b, needles)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// pgDump returns a plain-text dump of the database at dsn, made with the
// pg_dump of the highest installed PostgreSQL (the one the harness runs).
func pgDump(t *testing.T, dsn string) []byte {
	t.Helper()
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_dump")
	best, bestVer := "", -1
	for _, m := range matches {
		if v, err := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(m)))); err == nil && v > bestVer {
			best, bestVer = m, v
		}
	}
	if best == "" {
		t.Fatal("pg_dump not found: run scripts/deps.sh (as root: apt-get install -y postgresql)")
	}
	cmd := exec.Command(best, "--dbname", dsn, "--no-owner", "--no-privileges")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		// stderr may quote the connection string; the password is a
		// throwaway cluster's, but keep it out of logs anyway.
		t.Fatalf("pg_dump: %v\n%s", err, strings.ReplaceAll(stderr.String(), dsn, "<dsn>"))
	}
	return out
}

// checkSealedKeyRows reads every sealed software key and checks it is
// ciphertext: not parseable as any private key encoding, and of a length
// that carries the barrier's header and tag.
func checkSealedKeyRows(t *testing.T, db *sql.DB) int {
	t.Helper()
	rows, err := db.Query("SELECT name, sealed FROM key_blobs")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var name string
		var sealed []byte
		if err := rows.Scan(&name, &sealed); err != nil {
			t.Fatal(err)
		}
		n++
		if len(sealed) < 1+4+12+16+1 {
			t.Errorf("key %q: sealed value is %d bytes, too short to be barrier ciphertext", name, len(sealed))
		}
		if _, err := x509.ParsePKCS8PrivateKey(sealed); err == nil {
			t.Errorf("key %q: the sealed column parses as a PKCS#8 private key", name)
		}
		if _, err := x509.ParseECPrivateKey(sealed); err == nil {
			t.Errorf("key %q: the sealed column parses as a SEC 1 EC private key", name)
		}
		if _, err := x509.ParsePKCS1PrivateKey(sealed); err == nil {
			t.Errorf("key %q: the sealed column parses as a PKCS#1 RSA private key", name)
		}
		for what, m := range pkcs8Markers {
			if bytes.Contains(sealed, m) {
				t.Errorf("key %q: the sealed column contains a %s", name, what)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCanary stores secrets in a dev server, on SQLite and on PostgreSQL,
// and then looks for them, and for any private key, in everything the server
// persisted: the data directory and a dump of the database.
func TestCanary(t *testing.T) {
	tests := []struct {
		name     string
		postgres bool
	}{
		{name: "sqlite"},
		{name: "postgres", postgres: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			dataDir := filepath.Join(dir, "data")
			var extra []string
			dsn := ""
			if tt.postgres {
				dsn = testharness.StartPostgres(t)
				extra = append(extra, "--storage", dsn)
			}
			d := startDev(t, dataDir, extra...)

			// The designated secret files.
			masterHex, err := os.ReadFile(filepath.Join(dataDir, "dev-unseal.key"))
			if err != nil {
				t.Fatal(err)
			}
			master, err := hex.DecodeString(strings.TrimSpace(string(masterHex)))
			if err != nil || len(master) != 32 {
				t.Fatalf("dev-unseal.key: %v (%d bytes)", err, len(master))
			}
			rootToken := d.exports["SIGIL_TOKEN"]
			tokenRaw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(rootToken, "sgt_"))
			if err != nil || !strings.HasPrefix(rootToken, "sgt_") {
				t.Fatalf("root token %q is not sgt_<base64url>: %v", rootToken, err)
			}

			// Use the server: certificates from CSRs, a revocation, a
			// locally generated workload key, a CRL, a barrier key
			// rotation with rewrap, and a new intermediate (a new key in
			// custody).
			var serials []string
			var leafDER []byte // positive control: stored in clear, must be found
			for _, cn := range []string{"canary-a.example.test", "canary-b.example.test", "canary-c.example.test"} {
				out, stderr, code := d.cli(t, "ca", "sign", "--csr", writeCSR(t, dir, cn), "--profile", "server", "--ttl", "1h")
				if code != 0 {
					t.Fatalf("ca sign %s: %s", cn, stderr)
				}
				leaf := leafFrom(t, out)
				serials = append(serials, leaf.SerialNumber.Text(16))
				leafDER = leaf.Raw
			}
			if _, stderr, code := d.cli(t, "ca", "revoke", "--reason", "keyCompromise", serials[0]); code != 0 {
				t.Fatalf("ca revoke: %s", stderr)
			}
			svidKey, svidCert := filepath.Join(dir, "svid.key"), filepath.Join(dir, "svid.pem")
			if _, stderr, code := d.cli(t, "ca", "issue", "--spiffe-id", "spiffe://sigil.test/ns/canary/sa/web", "--key-out", svidKey, "--cert-out", svidCert); code != 0 {
				t.Fatalf("ca issue: %s", stderr)
			}
			if _, stderr, code := d.cli(t, "ca", "crl", "--out", filepath.Join(dir, "ca.crl")); code != 0 {
				t.Fatalf("ca crl: %s", stderr)
			}
			if _, stderr, code := d.cli(t, "operator", "rotate"); code != 0 {
				t.Fatalf("operator rotate: %s", stderr)
			}
			if _, stderr, code := d.cli(t, "operator", "rewrap"); code != 0 {
				t.Fatalf("operator rewrap: %s", stderr)
			}
			if _, stderr, code := d.cli(t, "ca", "intermediate", "rotate"); code != 0 {
				t.Fatalf("ca intermediate rotate: %s", stderr)
			}
			if _, stderr, code := d.cli(t, "ca", "sign", "--csr", writeCSR(t, dir, "canary-d.example.test"), "--profile", "server", "--ttl", "1h"); code != 0 {
				t.Fatalf("ca sign after rotations: %s", stderr)
			}

			// The workload key never went to the server; it must not be
			// there either.
			keyPEM, err := os.ReadFile(svidKey)
			if err != nil {
				t.Fatal(err)
			}
			blk, _ := pem.Decode(keyPEM)
			if blk == nil {
				t.Fatal("ca issue --key-out wrote no PEM")
			}
			svidPriv, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				if svidPriv, err = x509.ParseECPrivateKey(blk.Bytes); err != nil {
					t.Fatalf("workload key: %v", err)
				}
			}

			needles := []needle{{"a PEM private key", []byte("PRIVATE KEY")}}
			for what, m := range pkcs8Markers {
				needles = append(needles, needle{what, m}, needle{what + " (hex)", []byte(hex.EncodeToString(m))})
			}
			needles = append(needles, needle{"the root token", []byte(rootToken)})
			needles = append(needles, secretNeedles("the dev master key", master)...)
			needles = append(needles, secretNeedles("the root token's secret", tokenRaw)...)
			needles = append(needles, secretNeedles("the workload key", blk.Bytes)...)
			if k, ok := svidPriv.(*ecdsa.PrivateKey); ok {
				if b, err := k.Bytes(); err == nil {
					needles = append(needles, secretNeedles("the workload key's scalar", b)...)
				}
			}
			designated := []string{"dev-unseal.key", "root-token"}

			// While running (the SQLite write-ahead log is still there) and
			// after a clean stop.
			if n := scanDir(t, dataDir, needles, designated...); n == 0 {
				t.Fatal("scanned no files")
			}
			d.stop(t)
			scanDir(t, dataDir, needles, designated...)
			// Control: the scan sees stored bytes (certificates are public
			// and stored as DER), so finding nothing above means something.
			control := []needle{{"a certificate (raw)", leafDER}, {"a certificate (hex)", []byte(hex.EncodeToString(leafDER))}}

			var db *sql.DB
			if tt.postgres {
				dump := pgDump(t, dsn)
				if !bytes.Contains(dump, []byte("key_blobs")) {
					t.Fatalf("pg_dump output has no key_blobs table (%d bytes)", len(dump))
				}
				scan(t, "pg_dump", dump, needles)
				if !bytes.Contains(dump, control[1].bytes) {
					t.Error("control: pg_dump does not show a stored certificate as hex; the scan would miss hex-encoded secrets")
				}
				if db, err = sql.Open("pgx", dsn); err != nil {
					t.Fatal(err)
				}
				defer db.Close()
			} else {
				db = openSQLite(t, filepath.Join(dataDir, "sigil.db"))
				raw, err := os.ReadFile(filepath.Join(dataDir, "sigil.db"))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Contains(raw, control[0].bytes) {
					t.Error("control: sigil.db does not hold a stored certificate's DER; the scan would miss raw secrets")
				}
			}
			// Root, two intermediates, and the keys the server made for
			// itself (OCSP, listener) are all sealed software keys.
			n := checkSealedKeyRows(t, db)
			if n < 3 {
				t.Errorf("key_blobs has %d rows, want at least root and two intermediates", n)
			}
			t.Logf("%d sealed custody keys checked", n)
		})
	}
}
