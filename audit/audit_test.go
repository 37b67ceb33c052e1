package audit_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

var key = bytes.Repeat([]byte{7}, 32)

const canary = "s3cret-canary-P@ssw0rd"

func record(i int) audit.Record {
	return audit.Record{
		RequestID: fmt.Sprintf("req-%d", i), Identity: "spiffe://example.org/ns/payments/api", AuthMethod: "mtls",
		Operation: "EngineService.Mint", Path: "db/creds/payments-ro",
		Decision: audit.Decision{Allowed: true, Reason: "granted by policy \"payments\" rule 1"},
		Request:  map[string]audit.Value{"role": audit.Plain("payments-ro"), "csr_key": audit.Secret(canary)},
		Response: map[string]audit.Value{"password": audit.Secret(canary + "-resp"), "lease": audit.Plain("db/payments-ro/x")},
		LeaseIDs: []string{"db/payments-ro/x"}, Status: "OK",
	}
}

func openFile(t *testing.T, opts audit.FileOptions) (*audit.FileSink, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := audit.OpenFile(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

func openDB(t *testing.T) storage.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "sigil.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func verifyLines(lines []string, opts audit.VerifyOptions) error {
	_, err := audit.VerifyFile(strings.NewReader(strings.Join(lines, "\n")+"\n"), opts)
	return err
}

func wantBreak(t *testing.T, err error, line int, seq uint64, reason string) {
	t.Helper()
	var ve *audit.VerifyError
	if !errors.As(err, &ve) || !errors.Is(err, audit.ErrTampered) {
		t.Fatalf("got %v, want a VerifyError", err)
	}
	if ve.Line != line || ve.Seq != seq || !strings.Contains(ve.Reason, reason) {
		t.Fatalf("got %v, want line %d seq %d %q", err, line, seq, reason)
	}
}

func TestFileChainAndTampering(t *testing.T) {
	ctx := t.Context()
	fs, path := openFile(t, audit.FileOptions{})
	db := openDB(t)
	l, err := audit.New(audit.Options{HMACKey: key}, fs, audit.NewDBSink(db))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		if err := l.Log(ctx, record(i)); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v", fi.Mode().Perm(), err)
	}
	lines := readLines(t, path)
	rep, err := audit.VerifyFile(strings.NewReader(strings.Join(lines, "\n")+"\n"), audit.VerifyOptions{})
	if err != nil || rep.Records != 6 || rep.Head.Seq != 6 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	if _, err := audit.VerifyDB(ctx, db.Audit(), audit.VerifyOptions{}); err != nil {
		t.Fatalf("verify db: %v", err)
	}

	// Secrets appear only as their HMAC, which Logger.Hash reproduces.
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, []byte(canary)) {
		t.Fatal("secret in the audit file")
	}
	if !bytes.Contains(raw, []byte(l.Hash(canary))) || !strings.HasPrefix(l.Hash(canary), audit.HashPrefix) {
		t.Fatal("HMAC of the secret missing")
	}
	rows, err := db.Audit().List(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if bytes.Contains(r.Record, []byte(canary)) {
			t.Fatal("secret in the database")
		}
	}

	edit := func(line string, from, to string) string {
		if !strings.Contains(line, from) {
			t.Fatalf("%q not in %s", from, line)
		}
		return strings.Replace(line, from, to, 1)
	}
	clone := func() []string { return append([]string(nil), lines...) }

	t.Run("Modified", func(t *testing.T) {
		ls := clone()
		ls[2] = edit(ls[2], `"allowed":true`, `"allowed":false`)
		wantBreak(t, verifyLines(ls, audit.VerifyOptions{}), 3, 3, "modified")
	})
	t.Run("Removed", func(t *testing.T) {
		ls := clone()
		ls = append(ls[:3], ls[4:]...)
		wantBreak(t, verifyLines(ls, audit.VerifyOptions{}), 4, 4, "found seq 5 where 4 was expected")
	})
	t.Run("Reordered", func(t *testing.T) {
		ls := clone()
		ls[1], ls[2] = ls[2], ls[1]
		wantBreak(t, verifyLines(ls, audit.VerifyOptions{}), 2, 2, "found seq 3")
	})
	t.Run("Garbage", func(t *testing.T) {
		ls := clone()
		ls[4] = "{not json"
		wantBreak(t, verifyLines(ls, audit.VerifyOptions{}), 5, 5, "not a record")
	})
	t.Run("TruncatedTail", func(t *testing.T) {
		err := verifyLines(lines[:4], audit.VerifyOptions{ExpectHead: &audit.Head{Seq: 6}})
		wantBreak(t, err, 5, 5, "records removed from the end")
	})
	t.Run("Continuation", func(t *testing.T) {
		if err := verifyLines(lines[3:], audit.VerifyOptions{}); err == nil {
			t.Fatal("a chain without its start verified")
		}
		if err := verifyLines(lines[3:], audit.VerifyOptions{Continuation: true}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("DBModified", func(t *testing.T) {
		sq := db.(interface{ DB() *sql.DB }).DB()
		var rec []byte
		if err := sq.QueryRowContext(ctx, `SELECT record FROM audit_log WHERE seq = 3`).Scan(&rec); err != nil {
			t.Fatal(err)
		}
		bad := bytes.Replace(rec, []byte("payments-ro"), []byte("payments-rw"), 1)
		if _, err := sq.ExecContext(ctx, `UPDATE audit_log SET record = ? WHERE seq = 3`, bad); err != nil {
			t.Fatal(err)
		}
		_, err := audit.VerifyDB(ctx, db.Audit(), audit.VerifyOptions{})
		wantBreak(t, err, 0, 3, "modified")
		// Restore, then delete a middle row.
		if _, err := sq.ExecContext(ctx, `UPDATE audit_log SET record = ? WHERE seq = 3`, rec); err != nil {
			t.Fatal(err)
		}
		if _, err := audit.VerifyDB(ctx, db.Audit(), audit.VerifyOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := sq.ExecContext(ctx, `DELETE FROM audit_log WHERE seq = 4`); err != nil {
			t.Fatal(err)
		}
		_, err = audit.VerifyDB(ctx, db.Audit(), audit.VerifyOptions{})
		wantBreak(t, err, 0, 4, "found seq 5")
		if _, err := sq.ExecContext(ctx, `DELETE FROM audit_log WHERE seq >= 4`); err != nil {
			t.Fatal(err)
		}
		_, err = audit.VerifyDB(ctx, db.Audit(), audit.VerifyOptions{})
		wantBreak(t, err, 0, 4, "removed from the end")
	})
}

func TestReopenContinuesChain(t *testing.T) {
	ctx := t.Context()
	fs, path := openFile(t, audit.FileOptions{})
	l, _ := audit.New(audit.Options{HMACKey: key}, fs)
	for i := range 3 {
		if err := l.Log(ctx, record(i)); err != nil {
			t.Fatal(err)
		}
	}
	// A restart recovers the head from the file.
	if err := fs.Close(); err != nil {
		t.Fatal(err)
	}
	fs2, err := audit.OpenFile(path, audit.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer fs2.Close()
	if fs2.Head().Seq != 3 {
		t.Fatalf("recovered head %d", fs2.Head().Seq)
	}
	l2, _ := audit.New(audit.Options{HMACKey: key}, fs2)
	if err := l2.Log(ctx, record(3)); err != nil {
		t.Fatal(err)
	}
	// logrotate: move the file away, reopen, keep logging.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := fs2.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := l2.Log(ctx, record(4)); err != nil {
		t.Fatal(err)
	}
	old, cur := readLines(t, path+".1"), readLines(t, path)
	if len(old) != 4 || len(cur) != 1 {
		t.Fatalf("%d + %d lines", len(old), len(cur))
	}
	if err := verifyLines(append(old, cur...), audit.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	// A torn last line refuses the file.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"seq":6`)
	f.Close()
	if _, err := audit.OpenFile(path, audit.FileOptions{}); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("torn file opened: %v", err)
	}
	// A world-readable file is refused.
	loose := filepath.Join(t.TempDir(), "loose.log")
	os.WriteFile(loose, nil, 0o644)
	if _, err := audit.OpenFile(loose, audit.FileOptions{}); err == nil {
		t.Fatal("0644 file accepted")
	}
}

func TestConcurrentAppends(t *testing.T) {
	ctx := t.Context()
	fs, path := openFile(t, audit.FileOptions{SyncEvery: 8, SyncInterval: 10 * time.Millisecond})
	db := openDB(t)
	l, err := audit.New(audit.Options{HMACKey: key}, fs, audit.NewDBSink(db))
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 15
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				if err := l.Log(ctx, record(w*100+i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := fs.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != workers*each {
		t.Fatalf("%d lines", len(lines))
	}
	if err := verifyLines(lines, audit.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.VerifyDB(ctx, db.Audit(), audit.VerifyOptions{})
	if err != nil || rep.Records != workers*each {
		t.Fatalf("db: %+v %v", rep, err)
	}
}

// A second node on the same database: two Loggers, two stores, one chain.
func TestTwoNodesOneDatabase(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "sigil.db")
	var nodes []*audit.Logger
	var first storage.Store
	for range 2 {
		s, err := sqlite.Open(ctx, path, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		if first == nil {
			first = s
		}
		l, _ := audit.New(audit.Options{HMACKey: key}, audit.NewDBSink(s))
		nodes = append(nodes, l)
	}
	var wg sync.WaitGroup
	for _, l := range nodes {
		wg.Go(func() {
			for i := range 10 {
				if err := l.Log(ctx, record(i)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if rep, err := audit.VerifyDB(ctx, first.Audit(), audit.VerifyOptions{}); err != nil || rep.Records != 20 {
		t.Fatalf("%+v %v", rep, err)
	}
}

func TestCheckpoints(t *testing.T) {
	ctx := t.Context()
	for _, k := range []struct {
		name   string
		signer crypto.Signer
	}{
		{"ecdsa", must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))},
		{"ed25519", func() crypto.Signer { _, k, _ := ed25519.GenerateKey(rand.Reader); return k }()},
	} {
		t.Run(k.name, func(t *testing.T) {
			fs, path := openFile(t, audit.FileOptions{})
			l, err := audit.New(audit.Options{HMACKey: key, Signer: k.signer, CheckpointEvery: 3}, fs)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 4 {
				if err := l.Log(ctx, record(i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
			lines := readLines(t, path)
			opts := audit.VerifyOptions{PublicKey: k.signer.Public(), CheckpointEvery: 3}
			rep, err := audit.VerifyFile(strings.NewReader(strings.Join(lines, "\n")+"\n"), opts)
			if err != nil || rep.LastCheckpoint != 5 {
				t.Fatalf("%+v %v", rep, err)
			}
			// Rewriting a record and recomputing the whole chain after it
			// (what an attacker without the key can do) breaks the
			// signatures.
			recs := parse(t, lines)
			recs[1].Path = "db/creds/admin"
			forged := rechain(t, recs)
			if _, err := audit.Verify(forged, audit.VerifyOptions{}); err != nil {
				t.Fatalf("the forged chain itself should verify: %v", err)
			}
			_, err = audit.Verify(forged, opts)
			wantBreak(t, err, 0, 3, "checkpoint signature")
			// Dropping a signature where one is due is detected too.
			recs = parse(t, lines)
			recs[2].Signature = ""
			_, err = audit.Verify(recs, opts)
			wantBreak(t, err, 0, 3, "missing")
			// Another key's signatures do not verify.
			other := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
			_, err = audit.Verify(parse(t, lines), audit.VerifyOptions{PublicKey: other.Public()})
			wantBreak(t, err, 0, 3, "signature")
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func parse(t *testing.T, lines []string) []audit.Record {
	t.Helper()
	out := make([]audit.Record, len(lines))
	for i, l := range lines {
		if err := json.Unmarshal([]byte(l), &out[i]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// rechain recomputes every hash the way an attacker without the signing
// key would (the chain's algorithm is public), keeping the old signatures.
func rechain(t *testing.T, recs []audit.Record) []audit.Record {
	t.Helper()
	fs, path := openFile(t, audit.FileOptions{})
	l, err := audit.New(audit.Options{HMACKey: bytes.Repeat([]byte{1}, 32)}, fs)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := l.Log(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	out := parse(t, readLines(t, path))
	for i := range out {
		out[i].Signature = recs[i].Signature
	}
	return out
}

func TestSinkFailureFailsLog(t *testing.T) {
	ctx := t.Context()
	fs, _ := openFile(t, audit.FileOptions{})
	l, _ := audit.New(audit.Options{HMACKey: key}, fs, failing{})
	err := l.Log(ctx, record(0))
	if !errors.Is(err, audit.ErrSink) {
		t.Fatalf("got %v, want ErrSink", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	l2, _ := audit.New(audit.Options{HMACKey: key}, fs)
	if err := l2.Log(cctx, record(1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if _, err := audit.New(audit.Options{HMACKey: key[:16]}, fs); err == nil {
		t.Fatal("short key accepted")
	}
	if _, err := audit.New(audit.Options{HMACKey: key}); err == nil {
		t.Fatal("no sink accepted")
	}
	// A secret can never be encoded unhashed.
	if _, err := json.Marshal(audit.Secret(canary)); !errors.Is(err, audit.ErrUnhashedSecret) {
		t.Fatalf("marshal secret: %v", err)
	}
}

type failing struct{}

func (failing) Append(context.Context, audit.BuildFunc) error { return errors.New("disk full") }
func (failing) Close() error                                  { return nil }
