// Package authmethodtest is the conformance suite every auth method type
// passes (jwt, oidc, ldap): configuration and role validation, kinded
// errors for refused and malformed credentials, concurrent logins.
package authmethodtest

import (
	"context"
	"maps"
	"sync"
	"testing"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/internal/errs"
)

// Fixture is what the suite needs from a type's test: real backends
// (an issuer's keys, a directory) behind valid settings and credentials.
type Fixture struct {
	Type authmethod.Type
	// Config is a valid configuration; Role valid role fields (nil for a
	// type without roles), stored under the name Good.Role.
	Config, Role map[string]string
	// Good logs in; Bad is well-formed but must be refused.
	Good, Bad authmethod.Credentials
}

// Run checks f.Type against the contract of authmethod.Type and Method.
func Run(t *testing.T, f Fixture) {
	t.Helper()
	ctx := context.Background()
	typ := f.Type
	if typ.Name() == "" {
		t.Fatal("Name() is empty")
	}
	t.Run("unknown config key refused", func(t *testing.T) {
		cfg := maps.Clone(f.Config)
		cfg["no_such_key_conformance"] = "1"
		if _, err := typ.CheckConfig(ctx, cfg); errs.KindOf(err) != errs.InvalidArgument {
			t.Fatalf("CheckConfig with an unknown key = %v, want InvalidArgument", err)
		}
	})
	cfg, err := typ.CheckConfig(ctx, maps.Clone(f.Config))
	if err != nil {
		t.Fatalf("CheckConfig(valid) = %v", err)
	}
	t.Run("stored config checks again", func(t *testing.T) {
		again, err := typ.CheckConfig(ctx, maps.Clone(cfg))
		if err != nil || !maps.Equal(again, cfg) {
			t.Fatalf("CheckConfig(stored form) = %v, %v; want the same %v", again, err, cfg)
		}
	})
	var role *authmethod.Role
	if f.Role != nil {
		t.Run("unknown role key refused", func(t *testing.T) {
			r := maps.Clone(f.Role)
			r["no_such_key_conformance"] = "1"
			if _, err := typ.CheckRole(cfg, r); errs.KindOf(err) != errs.InvalidArgument {
				t.Fatalf("CheckRole with an unknown key = %v, want InvalidArgument", err)
			}
		})
		fields, err := typ.CheckRole(cfg, maps.Clone(f.Role))
		if err != nil {
			t.Fatalf("CheckRole(valid) = %v", err)
		}
		role = &authmethod.Role{Name: f.Good.Role, Fields: fields}
	}
	loader := func(_ context.Context, name string) (*authmethod.Role, error) {
		if role == nil || name != role.Name {
			return nil, errs.Errorf(errs.NotFound, "role %q not found", name)
		}
		return role, nil
	}
	m, err := typ.New(ctx, "conformance", cfg)
	if err != nil {
		t.Fatalf("New = %v", err)
	}
	defer func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close = %v", err)
		}
	}()
	t.Run("good credentials log in", func(t *testing.T) {
		id, err := m.Login(ctx, f.Good, loader)
		if err != nil {
			t.Fatalf("Login(good) = %v", err)
		}
		if id.Name == "" {
			t.Fatal("identity has no name")
		}
		if f.Role != nil && (id.Role == nil || id.Role.Name != role.Name) {
			t.Fatalf("identity role %+v, want %q", id.Role, role.Name)
		}
	})
	t.Run("bad credentials refused", func(t *testing.T) {
		if _, err := m.Login(ctx, f.Bad, loader); errs.KindOf(err) != errs.PermissionDenied {
			t.Fatalf("Login(bad) = %v, want PermissionDenied", err)
		}
	})
	t.Run("empty credentials refused", func(t *testing.T) {
		c := authmethod.Credentials{Role: f.Good.Role}
		_, err := m.Login(ctx, c, loader)
		if k := errs.KindOf(err); k != errs.InvalidArgument && k != errs.PermissionDenied {
			t.Fatalf("Login(empty) = %v, want InvalidArgument or PermissionDenied", err)
		}
	})
	t.Run("concurrent logins", func(t *testing.T) {
		var wg sync.WaitGroup
		errc := make(chan error, 8)
		for range 8 {
			wg.Go(func() {
				if _, err := m.Login(ctx, f.Good, loader); err != nil {
					errc <- err
				}
			})
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			t.Fatalf("concurrent Login = %v", err)
		}
	})
}
