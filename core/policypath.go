package core

import (
	"strings"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/engines/transit"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
)

// The policy paths requests are authorised on. Each checks the names it
// joins, refusing an invalid one with InvalidArgument, so a crafted name
// can never reach a path it does not spell.

// MountPath checks a mount name and joins it with the rest of a path.
func MountPath(mount string, rest ...string) (string, error) {
	if err := engines.CheckPath(mount); err != nil {
		return "", errs.Wrap(errs.InvalidArgument, "", err)
	}
	return strings.Join(append([]string{mount}, rest...), "/"), nil
}

// RolePath checks MOUNT and ROLE and returns MOUNT/SUB/ROLE.
func RolePath(mount, sub, role string) (string, error) {
	p, err := MountPath(mount, sub, role)
	if err != nil {
		return "", err
	}
	if err := engines.CheckRoleName(role); err != nil {
		return "", errs.Wrap(errs.InvalidArgument, "", err)
	}
	return p, nil
}

// AdminMountPath is sys/mounts/MOUNT plus suffix; the internal token mount
// is not administered through it.
func AdminMountPath(mount, suffix string) (string, error) {
	if _, err := MountPath(mount); err != nil {
		return "", err
	}
	if mount == auth.LeaseMount {
		return "", errs.New(errs.FailedPrecondition, "mount \"auth\" is internal: API tokens are managed with `sigil token`")
	}
	return "sys/mounts/" + mount + suffix, nil
}

// AdminRolePath is sys/mounts/MOUNT/roles/ROLE.
func AdminRolePath(mount, role string) (string, error) {
	if _, err := RolePath(mount, "roles", role); err != nil {
		return "", err
	}
	return AdminMountPath(mount, "/roles/"+role)
}

// TransitKeyPath is MOUNT/SUB/NAME for a transit key.
func TransitKeyPath(mount, sub, name string) (string, error) {
	p, err := MountPath(mount, sub, name)
	if err != nil {
		return "", err
	}
	if err := transit.CheckName(name); err != nil {
		return "", errs.Wrap(errs.InvalidArgument, "", err)
	}
	return p, nil
}

// PolicyPath is sys/policies/NAME.
func PolicyPath(name string) (string, error) {
	if err := policy.ValidName(name); err != nil {
		return "", errs.Wrap(errs.InvalidArgument, "", err)
	}
	return "sys/policies/" + name, nil
}

// KVPath checks MOUNT and PATH and returns MOUNT/SUB/PATH (Vault KV v2's
// data, metadata, delete, undelete and destroy paths).
func KVPath(mount, sub, path string) (string, error) {
	if err := kv.CheckPath(path); err != nil {
		return "", errs.Wrap(errs.InvalidArgument, "", err)
	}
	return MountPath(mount, sub, path)
}

// KVListPath is MOUNT/metadata/PREFIX.
func KVListPath(mount, prefix string) (string, error) {
	if err := kv.CheckPrefix(prefix); err != nil {
		return "", errs.Wrap(errs.InvalidArgument, "kv list", err)
	}
	return MountPath(mount, strings.Trim("metadata/"+prefix, "/"))
}

// KVDelete is the path and capability of a kv delete, as Vault has them:
// the latest version needs delete on MOUNT/data/PATH, given versions
// update on MOUNT/delete/PATH.
func KVDelete(mount, path string, versions bool) (string, policy.Capability, error) {
	if versions {
		p, err := KVPath(mount, "delete", path)
		return p, policy.Update, err
	}
	p, err := KVPath(mount, "data", path)
	return p, policy.Delete, err
}

// TokenPath is sys/tokens/ID.
func TokenPath(id string) (string, error) {
	if id == "" || strings.ContainsAny(id, "/ *") {
		return "", errs.New(errs.InvalidArgument, "id is required: the token id (not the token)")
	}
	return "sys/tokens/" + id, nil
}
