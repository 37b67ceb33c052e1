package ldap

import (
	"context"
	"errors"
	"log/slog"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/internal/errs"
)

// TypeName is the auth method type as `sigil auth enable ldap` names it.
const TypeName = "ldap"

// Type is the ldap auth method type for authmethod.Registry.
type Type struct{ log *slog.Logger }

// NewType returns the ldap type.
func NewType(log *slog.Logger) *Type { return &Type{log: log} }

// Name implements authmethod.Type.
func (t *Type) Name() string { return TypeName }

// CheckConfig implements authmethod.Type: Vault's ldap keys, validated.
func (t *Type) CheckConfig(_ context.Context, cfg map[string]string) (map[string]string, error) {
	c, err := ParseConfig(cfg)
	if err != nil {
		return nil, errs.Errorf(errs.InvalidArgument, "%w", err)
	}
	return c.Stored(), nil
}

// CheckRole implements authmethod.Type. LDAP logins have no roles: policies
// come from the mount's token_policies and its groups.
func (t *Type) CheckRole(_, _ map[string]string) (map[string]string, error) {
	return nil, errs.New(errs.InvalidArgument, "ldap mounts have no roles: map LDAP groups to policies with `sigil auth group write MOUNT/GROUP token_policies=...`")
}

// New implements authmethod.Type.
func (t *Type) New(_ context.Context, mount string, cfg map[string]string) (authmethod.Method, error) {
	c, err := ParseConfig(cfg)
	if err != nil {
		return nil, errs.Wrap(errs.Internal, "load ldap configuration", err)
	}
	log := t.log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Method{client: New(c, log.With("mount", mount))}, nil
}

// Method is one configured ldap mount.
type Method struct{ client *Client }

// Login implements authmethod.Method: the username and password are checked
// against the directory; the user's groups are returned for the mount's
// group mapping.
func (m *Method) Login(ctx context.Context, creds authmethod.Credentials, _ authmethod.RoleLoader) (*authmethod.Identity, error) {
	if creds.Role != "" {
		return nil, errs.New(errs.InvalidArgument, "ldap logins take no role (policies come from the mount and its groups)")
	}
	if creds.JWT != "" || creds.Code != "" || creds.State != "" {
		return nil, errs.New(errs.InvalidArgument, "ldap logins take a username and password only")
	}
	res, err := m.client.Login(ctx, creds.Username, creds.Password)
	if err != nil {
		return nil, m.kinded(err)
	}
	return &authmethod.Identity{
		Name:     res.Username,
		Groups:   res.Groups,
		Metadata: map[string]string{"username": res.Username, "dn": res.DN},
	}, nil
}

// kinded gives a Login error its errs kind. The caller is not yet
// authenticated, so it learns neither the directory's addresses nor which
// step failed: those go to the server log. No message holds the password.
func (m *Method) kinded(err error) error {
	switch {
	case errors.Is(err, ErrInvalidInput):
		return errs.Errorf(errs.InvalidArgument, "%w", err)
	case errors.Is(err, ErrInvalidCredentials):
		return &errs.Error{Kind: errs.PermissionDenied, Msg: ErrInvalidCredentials.Error(), Err: err}
	case errors.Is(err, ErrUnavailable):
		m.client.log.Warn("ldap login failed: directory unavailable", "err", err)
		return &errs.Error{Kind: errs.Unavailable, Msg: "ldap server unavailable: no configured server could be reached, completed TLS or answered in time (details in the Sigil server log)", Err: err}
	}
	return errs.Wrap(errs.Internal, "ldap login", err)
}

// Close implements authmethod.Method.
func (m *Method) Close() error {
	m.client.Close()
	return nil
}
