package core_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, to break the audit log from outside
	_ "modernc.org/sqlite"             // the "sqlite" driver, likewise

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/internal/testharness"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/postgres"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

// signAuditBackend is a store for the sign-audit tests and a raw
// connection to the same database, through which a test breaks the audit
// log the way a failing disk or a full table would.
type signAuditBackend struct {
	name     string
	open     func(t *testing.T, dir string) (storage.Store, *sql.DB)
	breakSQL string // makes every insert into audit_log fail
	mend     string // undoes breakSQL
	poison   string // makes inserts of records holding "poisoned-" fail
}

func signAuditBackends() []signAuditBackend {
	return []signAuditBackend{
		{name: "sqlite", open: func(t *testing.T, dir string) (storage.Store, *sql.DB) {
			st, err := sqlite.Open(context.Background(), filepath.Join(dir, "sigil.db"), nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "sigil.db")+"?_pragma=busy_timeout(10000)")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			return st, db
		},
			breakSQL: `CREATE TRIGGER audit_broken BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log broken by the test'); END`,
			mend:     `DROP TRIGGER audit_broken`,
			poison: `CREATE TRIGGER audit_poison BEFORE INSERT ON audit_log WHEN instr(CAST(NEW.record AS TEXT), 'poisoned-') > 0
BEGIN SELECT RAISE(ABORT, 'poisoned by the test'); END`},
		{name: "postgres", open: func(t *testing.T, _ string) (storage.Store, *sql.DB) {
			dsn := testharness.StartPostgres(t)
			st, err := postgres.Open(context.Background(), dsn, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			db, err := sql.Open("pgx", dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			return st, db
		},
			breakSQL: `CREATE FUNCTION audit_broken() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit log broken by the test'; END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_broken BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_broken()`,
			mend: `DROP TRIGGER audit_broken ON audit_log; DROP FUNCTION audit_broken()`,
			poison: `CREATE FUNCTION audit_poison() RETURNS trigger AS $$ BEGIN
IF position('poisoned-'::bytea in NEW.record) > 0 THEN RAISE EXCEPTION 'poisoned by the test'; END IF;
RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_poison BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_poison()`},
	}
}

// signAuditCore is an initialised core over b with a CA, an audit file as
// well as the database log, and a caller allowed to sign server
// certificates.
func signAuditCore(t *testing.T, b signAuditBackend) (*core.Core, *core.Unsealed, *core.Caller, storage.Store, *sql.DB, string) {
	t.Helper()
	dir := t.TempDir()
	st, db := b.open(t, dir)
	file := filepath.Join(dir, "audit.jsonl")
	c, _ := (&stack{dir: dir, store: st}).open(t, func(o *core.Options) { o.Config.Audit.File = file })
	initialise(t, c, 1, 1)
	u := c.Current()
	ctx := context.Background()
	if _, err := u.Policies.Put(ctx, "signer", []byte("rules:\n  - path: \"ca/sign/server\"\n    capabilities: [create]\nnames:\n  dns: [\"*.test\"]\n")); err != nil {
		t.Fatal(err)
	}
	if err := u.CA.InitHierarchy(ctx, ca.InitRequest{CommonName: "sign audit test", KeyType: hsm.ECDSAP256}); err != nil {
		t.Fatal(err)
	}
	return c, u, caller(t, u, &auth.Identity{Name: "signer", Policies: []string{"signer"}}), st, db, file
}

// signRecord is the success record a transport hands core for a sign call.
func signRecord(cl *core.Caller, rid string) *core.CallAudit {
	return &core.CallAudit{Success: func() audit.Record {
		rec := cl.AuditRecord(rid, "/sigil.v1.CAService/Sign")
		rec.Status = "OK"
		return rec
	}}
}

// dbRecords returns the database audit log's records by request id.
func dbRecords(t *testing.T, st storage.AuditLog) map[string][]audit.Record {
	t.Helper()
	out := map[string][]audit.Record{}
	var after int64
	for {
		page, err := st.List(context.Background(), after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return out
		}
		for _, row := range page {
			var r audit.Record
			if err := json.Unmarshal(row.Record, &r); err != nil {
				t.Fatal(err)
			}
			out[r.RequestID] = append(out[r.RequestID], r)
		}
		after = page[len(page)-1].Seq
	}
}

// TestSignAuditCommitsWithTheCertificate: concurrent signs, each writing
// its success record in the transaction that records its certificate,
// interleaved with audit records written the ordinary way, leave one
// record per call with the fields the interceptor writes, in a chain that
// verifies, in the database and in the audit file alike.
func TestSignAuditCommitsWithTheCertificate(t *testing.T) {
	for _, b := range signAuditBackends() {
		t.Run(b.name, func(t *testing.T) {
			c, u, cl, st, _, file := signAuditCore(t, b)
			ctx := context.Background()
			const n = 48
			var wg sync.WaitGroup
			errc := make(chan error, 2*n)
			serials := make([]string, n)
			for i := range n {
				wg.Go(func() {
					rid := fmt.Sprintf("sign-%d", i)
					// Each call gets its own Caller, as each request does.
					cl := caller(t, u, cl.Identity)
					ca := signRecord(cl, rid)
					issued, err := c.Sign(ctx, cl, core.SignRequest{CSR: csr(t), Audit: ca})
					if err != nil {
						errc <- fmt.Errorf("%s: %w", rid, err)
						return
					}
					if !ca.Written() {
						errc <- fmt.Errorf("%s: success record not written with the certificate", rid)
					}
					serials[i] = issued.Record.Serial
				})
				wg.Go(func() {
					rec := audit.Record{RequestID: fmt.Sprintf("other-%d", i), Identity: "signer", Operation: "/sigil.v1.KVService/Get", Status: "OK", Decision: audit.Decision{Allowed: true}}
					if err := c.Audit(ctx, rec); err != nil {
						errc <- err
					}
				})
			}
			wg.Wait()
			close(errc)
			for err := range errc {
				t.Fatal(err)
			}
			recs := dbRecords(t, st.Audit())
			for i, serial := range serials {
				rid := fmt.Sprintf("sign-%d", i)
				got := recs[rid]
				if len(got) != 1 {
					t.Fatalf("%s: %d audit records, want 1", rid, len(got))
				}
				r := got[0]
				if r.Identity != "signer" || r.AuthMethod != "token" || r.Operation != "/sigil.v1.CAService/Sign" || r.Path != "ca/sign/server" ||
					!r.Decision.Allowed || r.Status != "OK" || r.Error != "" {
					t.Errorf("%s: record %+v", rid, r)
				}
				if _, err := u.CA.Get(ctx, serial); err != nil {
					t.Errorf("%s: certificate %s not in the inventory: %v", rid, serial, err)
				}
				if len(recs[fmt.Sprintf("other-%d", i)]) != 1 {
					t.Errorf("other-%d: not recorded once", i)
				}
			}
			check, err := c.VerifyAudit(ctx)
			if err != nil || check.Problem != "" {
				t.Fatalf("VerifyAudit = %+v, %v", check, err)
			}
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			rep, err := audit.VerifyFile(f, audit.VerifyOptions{})
			if err != nil {
				t.Fatalf("audit file: %v", err)
			}
			if rep.Records < 2*n {
				t.Fatalf("audit file holds %d records, want at least %d", rep.Records, 2*n)
			}
		})
	}
}

// TestSignAuditFailureIssuesNothing: when the success record cannot be
// appended, the call fails, the certificate is not in the inventory and
// no record claims it; once the log is mended, signing works again.
func TestSignAuditFailureIssuesNothing(t *testing.T) {
	for _, b := range signAuditBackends() {
		t.Run(b.name, func(t *testing.T) {
			c, u, cl, st, db, _ := signAuditCore(t, b)
			ctx := context.Background()
			before, _, err := u.CA.List(ctx, storage.CertFilter{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, b.breakSQL); err != nil {
				t.Fatal(err)
			}
			ca := signRecord(cl, "broken")
			issued, err := c.Sign(ctx, cl, core.SignRequest{CSR: csr(t), Audit: ca})
			if err == nil || issued != nil || ca.Written() {
				t.Fatalf("Sign with a broken audit log: issued %v, err %v, written %v; want an error and nothing", issued != nil, err, ca.Written())
			}
			if e, ok := errs.As(err); !ok || e.Kind != errs.Internal {
				t.Fatalf("Sign error %v, want internal", err)
			}
			after, _, err := u.CA.List(ctx, storage.CertFilter{})
			if err != nil {
				t.Fatal(err)
			}
			if len(after) != len(before) {
				t.Fatalf("inventory holds %d certificates after the failed call, %d before", len(after), len(before))
			}
			if _, err := db.ExecContext(ctx, b.mend); err != nil {
				t.Fatal(err)
			}
			if got := dbRecords(t, st.Audit())["broken"]; len(got) != 0 {
				t.Fatalf("the failed call left %d records", len(got))
			}
			ca = signRecord(cl, "mended")
			if _, err := c.Sign(ctx, cl, core.SignRequest{CSR: csr(t), Audit: ca}); err != nil || !ca.Written() {
				t.Fatalf("Sign after mending = %v (written %v)", err, ca.Written())
			}
			if check, err := c.VerifyAudit(ctx); err != nil || check.Problem != "" {
				t.Fatalf("VerifyAudit = %+v, %v", check, err)
			}
		})
	}
}

// TestSignAuditBatchFailureIsolated: concurrent signs share transactions
// and append their records as one batch; when the log refuses some of the
// records, exactly those calls fail and issue nothing, every other call
// gets its certificate with its one record, and the chain verifies.
func TestSignAuditBatchFailureIsolated(t *testing.T) {
	for _, b := range signAuditBackends() {
		t.Run(b.name, func(t *testing.T) {
			c, u, cl, st, db, _ := signAuditCore(t, b)
			ctx := context.Background()
			before, _, err := u.CA.List(ctx, storage.CertFilter{Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, b.poison); err != nil {
				t.Fatal(err)
			}
			const n = 48
			type result struct {
				serial string
				err    error
			}
			results := make([]result, n)
			rid := func(i int) string {
				if i%4 == 1 {
					return fmt.Sprintf("poisoned-%d", i)
				}
				return fmt.Sprintf("sign-%d", i)
			}
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					cl := caller(t, u, cl.Identity)
					ca := signRecord(cl, rid(i))
					issued, err := c.Sign(ctx, cl, core.SignRequest{CSR: csr(t), Audit: ca})
					if err == nil {
						if !ca.Written() {
							err = errors.New("success record not written with the certificate")
						}
						results[i] = result{serial: issued.Record.Serial, err: err}
						return
					}
					results[i] = result{err: err}
				})
			}
			wg.Wait()
			recs := dbRecords(t, st.Audit())
			good := 0
			for i, r := range results {
				id := rid(i)
				if i%4 == 1 {
					if r.err == nil {
						t.Errorf("%s: issued although its record was refused", id)
					} else if e, ok := errs.As(r.err); !ok || e.Kind != errs.Internal {
						t.Errorf("%s: error %v, want internal", id, r.err)
					}
					if len(recs[id]) != 0 {
						t.Errorf("%s: refused record stored", id)
					}
					continue
				}
				if r.err != nil {
					t.Errorf("%s: failed with the records of others refused: %v", id, r.err)
					continue
				}
				good++
				if len(recs[id]) != 1 {
					t.Errorf("%s: %d records, want 1", id, len(recs[id]))
				}
				if _, err := u.CA.Get(ctx, r.serial); err != nil {
					t.Errorf("%s: certificate not in the inventory: %v", id, err)
				}
			}
			after, _, err := u.CA.List(ctx, storage.CertFilter{Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			if len(after) != len(before)+good {
				t.Fatalf("inventory grew by %d, want %d (only the calls that succeeded)", len(after)-len(before), good)
			}
			if check, err := c.VerifyAudit(ctx); err != nil || check.Problem != "" {
				t.Fatalf("VerifyAudit = %+v, %v", check, err)
			}
		})
	}
}
