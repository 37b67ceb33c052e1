package audit_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/internal/testharness"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/postgres"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// dbBackend opens two stores on one database (two nodes) and a raw handle
// for installing triggers that make audit inserts fail.
type dbBackend struct {
	name string
	open func(t *testing.T) (a, b storage.Store, raw *sql.DB)
	// failWhere makes every audit insert whose record contains the word
	// fail; failAll makes every insert fail.
	failWhere func(word string) string
	failAll   string
}

func dbBackends() []dbBackend {
	return []dbBackend{
		{name: "sqlite", open: func(t *testing.T) (storage.Store, storage.Store, *sql.DB) {
			path := filepath.Join(t.TempDir(), "sigil.db")
			var st [2]storage.Store
			for i := range st {
				s, err := sqlite.Open(context.Background(), path, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				st[i] = s
			}
			raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { raw.Close() })
			return st[0], st[1], raw
		},
			failWhere: func(word string) string {
				return `CREATE TRIGGER audit_poison BEFORE INSERT ON audit_log WHEN instr(CAST(NEW.record AS TEXT), '` + word + `') > 0
BEGIN SELECT RAISE(ABORT, 'poisoned by the test'); END`
			},
			failAll: `CREATE TRIGGER audit_broken BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log broken by the test'); END`},
		{name: "postgres", open: func(t *testing.T) (storage.Store, storage.Store, *sql.DB) {
			dsn := testharness.StartPostgres(t)
			var st [2]storage.Store
			for i := range st {
				s, err := postgres.Open(context.Background(), dsn, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				st[i] = s
			}
			raw, err := sql.Open("pgx", dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { raw.Close() })
			return st[0], st[1], raw
		},
			failWhere: func(word string) string {
				return `CREATE FUNCTION audit_poison() RETURNS trigger AS $$ BEGIN
IF position('` + word + `'::bytea in NEW.record) > 0 THEN RAISE EXCEPTION 'poisoned by the test'; END IF;
RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_poison BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_poison()`
			},
			failAll: `CREATE FUNCTION audit_broken() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit log broken by the test'; END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_broken BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_broken()`},
	}
}

// logConcurrently logs n records per worker from workers goroutines on l
// and returns each record's error by operation name.
func logConcurrently(ctx context.Context, l *audit.Logger, prefix string, workers, n int, op func(w, i int) string) map[string]error {
	var mu sync.Mutex
	errs := map[string]error{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range n {
				rec := record(w*1000 + i)
				rec.Operation = prefix + op(w, i)
				err := l.Log(ctx, rec)
				mu.Lock()
				errs[rec.Operation] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errs
}

func plainOp(w, i int) string { return fmt.Sprintf("w%d/%d", w, i) }

// dbOps returns the operations the database log holds, in order, after
// verifying its chain against its head.
func dbOps(t *testing.T, db storage.Store) []string {
	t.Helper()
	ctx := t.Context()
	if _, err := audit.VerifyDB(ctx, db.Audit(), audit.VerifyOptions{}); err != nil {
		t.Fatalf("VerifyDB: %v", err)
	}
	var ops []string
	var after int64
	for {
		page, err := db.Audit().List(ctx, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return ops
		}
		for _, row := range page {
			var r audit.Record
			if err := json.Unmarshal(row.Record, &r); err != nil {
				t.Fatal(err)
			}
			ops = append(ops, r.Operation)
		}
		after = page[len(page)-1].Seq
	}
}

// Concurrent appends through the database sink's group commit, from two
// nodes on one database, with an audit file on one of them: the database
// holds every record once in one valid chain, and the file's own chain
// holds its node's records.
func TestDBSinkGroupCommitConcurrent(t *testing.T) {
	for _, b := range dbBackends() {
		t.Run(b.name, func(t *testing.T) {
			ctx := t.Context()
			st1, st2, _ := b.open(t)
			fs, path := openFile(t, audit.FileOptions{})
			l1, err := audit.New(audit.Options{HMACKey: key}, audit.NewDBSink(st1), fs)
			if err != nil {
				t.Fatal(err)
			}
			l2, err := audit.New(audit.Options{HMACKey: key}, audit.NewDBSink(st2))
			if err != nil {
				t.Fatal(err)
			}
			const workers, each = 16, 12
			var errs1, errs2 map[string]error
			var wg sync.WaitGroup
			wg.Go(func() { errs1 = logConcurrently(ctx, l1, "a/", workers, each, plainOp) })
			wg.Go(func() { errs2 = logConcurrently(ctx, l2, "b/", workers, each, plainOp) })
			wg.Wait()
			for op, err := range errs1 {
				if err != nil {
					t.Errorf("%s: %v", op, err)
				}
			}
			for op, err := range errs2 {
				if err != nil {
					t.Errorf("%s: %v", op, err)
				}
			}
			ops := dbOps(t, st1)
			if len(ops) != 2*workers*each {
				t.Fatalf("database holds %d records, want %d", len(ops), 2*workers*each)
			}
			seen := map[string]bool{}
			for _, op := range ops {
				if seen[op] {
					t.Fatalf("%s recorded twice", op)
				}
				seen[op] = true
			}
			if err := fs.Close(); err != nil {
				t.Fatal(err)
			}
			lines := readLines(t, path)
			if len(lines) != workers*each {
				t.Fatalf("file holds %d records, want %d", len(lines), workers*each)
			}
			if err := verifyLines(lines, audit.VerifyOptions{}); err != nil {
				t.Fatal(err)
			}
			for _, r := range parse(t, lines) {
				if !strings.HasPrefix(r.Operation, "a/") {
					t.Fatalf("file holds %s", r.Operation)
				}
			}
		})
	}
}

// When the database refuses audit records, every caller in every batch
// fails and nothing is stored; when it refuses some, exactly their callers
// fail (the batch they were in is retried record by record) and the chain
// stays whole.
func TestDBSinkGroupCommitFailure(t *testing.T) {
	for _, b := range dbBackends() {
		t.Run(b.name, func(t *testing.T) {
			ctx := t.Context()
			st, _, raw := b.open(t)
			l, err := audit.New(audit.Options{HMACKey: key}, audit.NewDBSink(st))
			if err != nil {
				t.Fatal(err)
			}
			// Something in the log first, so a failure cannot pass for an
			// empty table.
			if err := l.Log(ctx, record(1)); err != nil {
				t.Fatal(err)
			}
			const workers, each = 16, 4

			if _, err := raw.ExecContext(ctx, b.failAll); err != nil {
				t.Fatal(err)
			}
			for op, err := range logConcurrently(ctx, l, "all/", workers, each, plainOp) {
				if err == nil {
					t.Errorf("%s: logged while the database refuses every record", op)
				}
			}
			if ops := dbOps(t, st); len(ops) != 1 {
				t.Fatalf("after failed appends the database holds %d records, want 1", len(ops))
			}
			dropAll := map[string]string{"sqlite": `DROP TRIGGER audit_broken`,
				"postgres": `DROP TRIGGER audit_broken ON audit_log; DROP FUNCTION audit_broken()`}[b.name]
			if _, err := raw.ExecContext(ctx, dropAll); err != nil {
				t.Fatal(err)
			}

			if _, err := raw.ExecContext(ctx, b.failWhere("poison")); err != nil {
				t.Fatal(err)
			}
			poisoned := func(w, i int) string {
				if (w+i)%5 == 0 {
					return fmt.Sprintf("poison-w%d/%d", w, i)
				}
				return plainOp(w, i)
			}
			errs := logConcurrently(ctx, l, "some/", workers, each, poisoned)
			want := 1
			for op, err := range errs {
				bad := strings.Contains(op, "poison")
				if bad != (err != nil) {
					t.Errorf("%s: err %v", op, err)
				}
				if !bad {
					want++
				}
			}
			ops := dbOps(t, st)
			if len(ops) != want {
				t.Fatalf("database holds %d records, want %d", len(ops), want)
			}
			for _, op := range ops {
				if strings.Contains(op, "poison") {
					t.Fatalf("refused record %s stored", op)
				}
			}
		})
	}
}

// StagedWriter appends a batch of staged records inside the caller's
// transaction, in order and linked to whatever the log held; a rolled
// back transaction leaves none of them; an item staged by another Logger
// is refused (wrapping ErrSink) and nothing of its batch is stored.
func TestStagedWriterBatch(t *testing.T) {
	for _, b := range dbBackends() {
		t.Run(b.name, func(t *testing.T) {
			ctx := t.Context()
			st, _, _ := b.open(t)
			l, err := audit.New(audit.Options{HMACKey: key}, audit.NewDBSink(st))
			if err != nil {
				t.Fatal(err)
			}
			other, err := audit.New(audit.Options{HMACKey: key}, audit.NewDBSink(st))
			if err != nil {
				t.Fatal(err)
			}
			first := l.Writer()
			if l.Writer() != first || first == other.Writer() {
				t.Fatal("Writer is not one per Logger")
			}
			stage := func(l *audit.Logger, op string) any {
				rec := record(0)
				rec.Operation = op
				s, err := l.Stage(rec)
				if err != nil || s == nil {
					t.Fatalf("Stage: %v, %v", s, err)
				}
				return s
			}
			if err := l.Log(ctx, func() audit.Record { r := record(1); r.Operation = "before"; return r }()); err != nil {
				t.Fatal(err)
			}
			batch := []any{stage(l, "b1"), stage(l, "b2"), stage(l, "b3")}
			if err := st.InTx(ctx, func(tx storage.Repos) error { return l.Writer().WriteTx(ctx, tx, batch) }); err != nil {
				t.Fatal(err)
			}
			// Rolled back: nothing of it stays.
			rollback := fmt.Errorf("roll back")
			if err := st.InTx(ctx, func(tx storage.Repos) error {
				if err := l.Writer().WriteTx(ctx, tx, []any{stage(l, "gone1"), stage(l, "gone2")}); err != nil {
					return err
				}
				return rollback
			}); err != rollback {
				t.Fatalf("InTx = %v", err)
			}
			mixed := []any{stage(l, "m1"), stage(other, "foreign")}
			err = st.InTx(ctx, func(tx storage.Repos) error { return l.Writer().WriteTx(ctx, tx, mixed) })
			if !errors.Is(err, audit.ErrSink) {
				t.Fatalf("a foreign item: %v, want ErrSink", err)
			}
			if err := st.InTx(ctx, func(tx storage.Repos) error { return l.Writer().WriteTx(ctx, tx, []any{stage(l, "after")}) }); err != nil {
				t.Fatal(err)
			}
			got := strings.Join(dbOps(t, st), ",")
			if want := "before,b1,b2,b3,after"; got != want {
				t.Fatalf("log holds %s, want %s", got, want)
			}
		})
	}
}
