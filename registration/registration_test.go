package registration_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/internal/testharness"
	"github.com/sigil-ca/sigil/registration"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/postgres"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

func TestMain(m *testing.M) { testharness.Main(m) }

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"unix:uid:1000", true},
		{"unix:gid:0", true},
		{"unix:path:/usr/bin/app", true},
		{"unix:sha256:" + "ab" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd", true},
		{"unix:uid:-1", false},
		{"unix:uid:01", false},
		{"unix:uid:", false},
		{"unix:uid:4294967296", false},
		{"unix:path:relative/app", false},
		{"unix:sha256:ABCD", false},
		{"unix:sha256:" + "AB" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd", false},
		{"k8s:ns:default", false},
		{"unix:pid:1", false},
	}
	for _, tt := range tests {
		_, _, err := registration.ParseSelector(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseSelector(%q): %v, want ok=%v", tt.in, err, tt.ok)
		}
		if err != nil && !errors.Is(err, registration.ErrInvalid) {
			t.Errorf("ParseSelector(%q): %v is not ErrInvalid", tt.in, err)
		}
	}
}

func TestEntryValidate(t *testing.T) {
	const node, id = "spiffe://sigil.test/node/a", "spiffe://sigil.test/app"
	tests := []struct {
		name string
		e    registration.Entry
		ok   bool
	}{
		{"uid", registration.Entry{ParentID: node, SPIFFEID: id, Selectors: []string{"unix:uid:0"}}, true},
		{"sha256 only", registration.Entry{ParentID: node, SPIFFEID: id, Selectors: []string{"unix:sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}}, true},
		{"path only matches any user", registration.Entry{ParentID: node, SPIFFEID: id, Selectors: []string{"unix:path:/bin/sh"}}, false},
		{"gid only", registration.Entry{ParentID: node, SPIFFEID: id, Selectors: []string{"unix:gid:0"}}, false},
		{"no selectors", registration.Entry{ParentID: node, SPIFFEID: id}, false},
		{"other trust domain", registration.Entry{ParentID: node, SPIFFEID: "spiffe://evil.test/app", Selectors: []string{"unix:uid:0"}}, false},
		{"node's own identity", registration.Entry{ParentID: node, SPIFFEID: node, Selectors: []string{"unix:uid:0"}}, false},
		{"parent not a SPIFFE ID", registration.Entry{ParentID: "node-a", SPIFFEID: id, Selectors: []string{"unix:uid:0"}}, false},
		{"negative ttl", registration.Entry{ParentID: node, SPIFFEID: id, Selectors: []string{"unix:uid:0"}, TTL: -time.Second}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.e.Validate("sigil.test"); (err == nil) != tt.ok {
				t.Fatalf("%v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// TestStore runs against both storage backends: entries are node-scoped
// on read (GetForParent), listed per parent, and deleted.
func TestStore(t *testing.T) {
	backends := []struct {
		name string
		open func(t *testing.T) storage.Store
	}{
		{"sqlite", func(t *testing.T) storage.Store {
			st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "s.db"), nil)
			if err != nil {
				t.Fatal(err)
			}
			return st
		}},
		{"postgres", func(t *testing.T) storage.Store {
			st, err := postgres.Open(context.Background(), testharness.StartPostgres(t), nil)
			if err != nil {
				t.Fatal(err)
			}
			return st
		}},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			st := b.open(t)
			defer st.Close()
			ctx := context.Background()
			s := registration.NewStore(st.Settings(), "sigil.test")
			const nodeA, nodeB = "spiffe://sigil.test/node/a", "spiffe://sigil.test/node/b"
			ea := &registration.Entry{ParentID: nodeA, SPIFFEID: "spiffe://sigil.test/a", Selectors: []string{"unix:uid:1", "unix:uid:1"}, TTL: time.Minute}
			eb := &registration.Entry{ParentID: nodeB, SPIFFEID: "spiffe://sigil.test/b", Selectors: []string{"unix:uid:2"}}
			for _, e := range []*registration.Entry{ea, eb} {
				if err := s.Create(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			if len(ea.Selectors) != 1 {
				t.Errorf("duplicate selectors kept: %v", ea.Selectors)
			}
			if got, err := s.GetForParent(ctx, nodeA, ea.ID); err != nil || got.SPIFFEID != ea.SPIFFEID || got.TTL != time.Minute {
				t.Fatalf("own entry: %+v %v", got, err)
			}
			if _, err := s.GetForParent(ctx, nodeA, eb.ID); !errors.Is(err, registration.ErrNotFound) {
				t.Fatalf("node A read node B's entry: %v", err)
			}
			if list, err := s.List(ctx, nodeA); err != nil || len(list) != 1 || list[0].ID != ea.ID {
				t.Fatalf("list of node A: %v %v", list, err)
			}
			if list, err := s.List(ctx, ""); err != nil || len(list) != 2 {
				t.Fatalf("list all: %v %v", list, err)
			}
			got, err := s.Get(ctx, eb.ID)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(ctx, got); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Get(ctx, eb.ID); !errors.Is(err, registration.ErrNotFound) {
				t.Fatalf("deleted entry: %v", err)
			}
			if _, err := s.Get(ctx, "../x"); !errors.Is(err, registration.ErrInvalid) {
				t.Fatalf("malformed id: %v", err)
			}
		})
	}
}
