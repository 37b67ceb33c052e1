package core_test

import (
	"context"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines"
	kvengine "github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/engines/transit"
	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/internal/testharness"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/postgres"
)

// kvReadNodes opens two unsealed nodes over one database: the writer
// changes mounts, the reader reads. On SQLite both are one node (one
// store, one Core), so what is checked is the node's own changes; on
// PostgreSQL they are two Cores with their own stores and caches, as two
// servers sharing the database are.
func kvReadNodes(t *testing.T, backend string) (writer, reader *core.Unsealed, readerCore *core.Core) {
	t.Helper()
	ctx := context.Background()
	if backend == "sqlite" {
		c, _ := newStack(t).open(t)
		initialise(t, c, 1, 1)
		return c.Current(), c.Current(), c
	}
	dsn := testharness.StartPostgres(t)
	open := func() storage.Store {
		st, err := postgres.Open(ctx, dsn, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	a, _ := (&stack{dir: t.TempDir(), store: open()}).open(t)
	shares, _ := initialise(t, a, 1, 1)
	b, _ := (&stack{dir: t.TempDir(), store: open()}).open(t)
	if err := b.Start(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Unseal(ctx, shares[0]); err != nil {
		t.Fatal(err)
	}
	return a.Current(), b.Current(), b
}

// TestReadKVSeesMountChanges: a kv read on a node that already runs the
// mount's engine (and so no longer reads the mount row before the secret)
// never serves from a mount disabled, replaced by another engine type or
// reconfigured since, on this node or on another sharing the database.
func TestReadKVSeesMountChanges(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			w, _, rc := kvReadNodes(t, backend)
			r := newRecipient(t)
			ref := &core.RecipientRef{KEM: uint32(r.pub.KEM), PublicKey: r.pub.PublicKey}
			put := func(value string) {
				t.Helper()
				e, err := w.Mounts.Engine(ctx, "kv")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := e.(*kvengine.Engine).Put(ctx, "p", map[string][]byte{"k": []byte(value)}, nil); err != nil {
					t.Fatal(err)
				}
			}
			read := func() (string, error) {
				t.Helper()
				_, d, err := rc.ReadKV(ctx, nil, "kv", "p", 0, ref)
				if err != nil {
					return "", err
				}
				var env envelope.Envelope
				if err := env.UnmarshalBinary(d.Envelope); err != nil {
					t.Fatal(err)
				}
				got, err := envelope.OpenData(r.priv, &env, core.KVEnvelopeID("kv", "p"))
				if err != nil {
					t.Fatal(err)
				}
				return got["k"], nil
			}
			want := func(step, value string, is error) {
				t.Helper()
				// Twice: the first read may resolve the mount itself, the
				// second finds the engine running.
				for range 2 {
					got, err := read()
					if is != nil {
						if !errors.Is(err, is) {
							t.Fatalf("%s: read = %q, %v; want %v", step, got, err, is)
						}
						continue
					}
					if err != nil || got != value {
						t.Fatalf("%s: read = %q, %v; want %q", step, got, err, value)
					}
				}
			}
			if err := w.Mounts.Enable(ctx, "kv", kvengine.Type); err != nil {
				t.Fatal(err)
			}
			put("v1")
			want("written", b64("v1"), nil)

			// Versions older than 1 ms now read as deleted.
			if err := w.Mounts.Configure(ctx, "kv", map[string]string{kvengine.KeyDeleteVersionAfter: "1ms"}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			want("delete_version_after set", "", kvengine.ErrDeleted)
			if err := w.Mounts.Configure(ctx, "kv", map[string]string{kvengine.KeyDeleteVersionAfter: "0s"}); err != nil {
				t.Fatal(err)
			}
			want("delete_version_after cleared", b64("v1"), nil)

			if err := w.Mounts.Disable(ctx, "kv", nil); err != nil {
				t.Fatal(err)
			}
			want("disabled", "", engines.ErrMountNotFound)

			if err := w.Mounts.Enable(ctx, "kv", transit.Type); err != nil {
				t.Fatal(err)
			}
			want("a transit mount in its place", "", engines.ErrNotSupported)
			if err := w.Mounts.Disable(ctx, "kv", nil); err != nil {
				t.Fatal(err)
			}

			if err := w.Mounts.Enable(ctx, "kv", kvengine.Type); err != nil {
				t.Fatal(err)
			}
			want("re-enabled, empty", "", kvengine.ErrNotFound)
			put("v2")
			want("re-enabled, written", b64("v2"), nil)
		})
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
