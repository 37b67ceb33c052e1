package server_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/internal/adapt"
	"github.com/sigil-ca/sigil/internal/testharness"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/postgres"
)

// backend is a real store reachable both through Sigil's storage layer and
// through a raw SQL connection, as an attacker with database access has it.
type backend struct {
	name  string
	open  func(t *testing.T) (storage.Store, *sql.DB)
	param func(n int) string // placeholder syntax
}

func backends() []backend {
	return []backend{
		{
			name: "sqlite",
			open: func(t *testing.T) (storage.Store, *sql.DB) {
				path := filepath.Join(t.TempDir(), "sigil.db")
				st := barriertest.OpenSQLite(t, path)
				// storage/sqlite registered the modernc driver as "sqlite".
				db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { db.Close() })
				return st, db
			},
			param: func(int) string { return "?" },
		},
		{
			name: "postgres",
			open: func(t *testing.T) (storage.Store, *sql.DB) {
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
			param: func(n int) string { return fmt.Sprintf("$%d", n) },
		},
	}
}

// TestCopiedSealedRow copies one record's sealed value onto another record's
// row directly in the database and checks that reading the target fails
// with barrier.ErrIntegrity (the associated data binds each ciphertext to its
// record), never with a plausible plaintext, and that putting the original
// bytes back makes it readable again.
func TestCopiedSealedRow(t *testing.T) {
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			st, db := be.open(t)
			master := barriertest.MasterKey(t)
			// fresh returns a newly unsealed barrier and keystore over the
			// store, as after a restart: nothing cached in memory.
			fresh := func() (*barrier.Barrier, *hsm.Soft) {
				t.Helper()
				b := barriertest.Open(t, st, master)
				soft := hsm.NewSoft(adapt.Blobs(st.KeyBlobs()), b, nil)
				t.Cleanup(func() { soft.Close() })
				return b, soft
			}
			b, soft := fresh()

			keys := []struct {
				name string
				typ  hsm.KeyType
			}{
				{"key-a", hsm.ECDSAP256},
				{"key-b", hsm.ECDSAP256}, // same type as key-a: only the binding can tell them apart
				{"key-c", hsm.ECDSAP384},
			}
			for _, k := range keys {
				if _, err := soft.CreateKey(ctx, k.name, k.typ); err != nil {
					t.Fatalf("CreateKey %s: %v", k.name, err)
				}
			}
			tokens := auth.NewTokens(st, b)
			token, _, err := tokens.Create(ctx, auth.CreateOptions{Policies: []string{"p"}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tokens.Verify(ctx, token); err != nil {
				t.Fatalf("Verify before tampering: %v", err)
			}

			sealedOf := func(table, keyCol, valCol, id string) []byte {
				t.Helper()
				var v []byte
				q := fmt.Sprintf("SELECT %s FROM %s WHERE %s = %s", valCol, table, keyCol, be.param(1))
				if err := db.QueryRowContext(ctx, q, id).Scan(&v); err != nil {
					t.Fatalf("read %s %s: %v", table, id, err)
				}
				return v
			}
			set := func(table, keyCol, valCol, id string, v []byte) {
				t.Helper()
				q := fmt.Sprintf("UPDATE %s SET %s = %s WHERE %s = %s", table, valCol, be.param(1), keyCol, be.param(2))
				res, err := db.ExecContext(ctx, q, v, id)
				if err != nil {
					t.Fatalf("update %s %s: %v", table, id, err)
				}
				if n, _ := res.RowsAffected(); n != 1 {
					t.Fatalf("update %s %s: %d rows", table, id, n)
				}
			}
			const hmacSetting = "auth.token_hmac_key"

			tests := []struct {
				name   string
				table  string // the row overwritten
				keyCol string
				valCol string
				target string
				from   func() []byte // the sealed bytes copied onto the target
				use    func() error  // reads the target through Sigil, from cold
			}{
				{
					name: "key A onto key B (same type)", table: "key_blobs", keyCol: "name", valCol: "sealed", target: "key-b",
					from: func() []byte { return sealedOf("key_blobs", "name", "sealed", "key-a") },
					use: func() error {
						_, soft := fresh()
						_, err := soft.Signer(ctx, "key-b")
						return err
					},
				},
				{
					name: "key A onto key C (other type)", table: "key_blobs", keyCol: "name", valCol: "sealed", target: "key-c",
					from: func() []byte { return sealedOf("key_blobs", "name", "sealed", "key-a") },
					use: func() error {
						_, soft := fresh()
						_, err := soft.Signer(ctx, "key-c")
						return err
					},
				},
				{
					// The token HMAC key is a sealed setting; a sealed key
					// blob dropped in its place must not become the key.
					name: "key A onto the token HMAC key", table: "settings", keyCol: "key", valCol: "value", target: hmacSetting,
					from: func() []byte { return sealedOf("key_blobs", "name", "sealed", "key-a") },
					use: func() error {
						b, _ := fresh()
						_, err := auth.NewTokens(st, b).Verify(ctx, token)
						return err
					},
				},
				{
					name: "token HMAC key onto key B", table: "key_blobs", keyCol: "name", valCol: "sealed", target: "key-b",
					from: func() []byte { return sealedOf("settings", "key", "value", hmacSetting) },
					use: func() error {
						_, soft := fresh()
						_, err := soft.Signer(ctx, "key-b")
						return err
					},
				},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					if err := tt.use(); err != nil {
						t.Fatalf("before the copy: %v", err)
					}
					orig := sealedOf(tt.table, tt.keyCol, tt.valCol, tt.target)
					set(tt.table, tt.keyCol, tt.valCol, tt.target, tt.from())
					err := tt.use()
					if !errors.Is(err, barrier.ErrIntegrity) {
						t.Errorf("after the copy: err = %v, want barrier.ErrIntegrity", err)
					}
					set(tt.table, tt.keyCol, tt.valCol, tt.target, orig)
					if err := tt.use(); err != nil {
						t.Errorf("after restoring the original bytes: %v", err)
					}
				})
			}

			// The untouched key still signs.
			_, soft2 := fresh()
			s, err := soft2.Signer(ctx, "key-a")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); err != nil {
				t.Fatalf("key-a: %v", err)
			}
		})
	}
}
