package sqldb

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

func (r repos) KV() storage.KV { return kvRepo{r} }

// ---- kv

type kvRepo struct{ r repos }

const kvMetaCols = `mount, path, current_version, max_versions, cas_required, delete_version_after, sealed_custom, created_at, updated_at`
const kvVersionCols = `mount, path, version, sealed, created_at, deleted_at, destroyed`

func kvOp(op, mount, path string) string { return "kv: " + op + " " + mount + "#" + path }

func scanKVMeta(sc interface{ Scan(...any) error }) (*storage.KVMeta, error) {
	var m storage.KVMeta
	var dva int64
	if err := sc.Scan(&m.Mount, &m.Path, &m.CurrentVersion, &m.MaxVersions, &m.CASRequired, &dva, &m.SealedCustom,
		timeCol{&m.CreatedAt}, timeCol{&m.UpdatedAt}); err != nil {
		return nil, err
	}
	m.DeleteVersionAfter = time.Duration(dva) * time.Microsecond
	return &m, nil
}

func scanKVVersion(sc interface{ Scan(...any) error }) (*storage.KVVersion, error) {
	var v storage.KVVersion
	if err := sc.Scan(&v.Mount, &v.Path, &v.Version, &v.Sealed, timeCol{&v.CreatedAt}, timeCol{&v.DeletedAt}, &v.Destroyed); err != nil {
		return nil, err
	}
	return &v, nil
}

func (s kvRepo) GetMeta(ctx context.Context, mount, path string) (*storage.KVMeta, error) {
	m, err := scanKVMeta(s.r.queryRow(ctx, `SELECT `+kvMetaCols+` FROM kv_meta WHERE mount = ? AND path = ?`, mount, path))
	if err != nil {
		return nil, s.r.wrap(kvOp("get metadata", mount, path), err)
	}
	return m, nil
}

func (s kvRepo) PutMeta(ctx context.Context, m *storage.KVMeta) error {
	if m.CreatedAt.IsZero() {
		m.CreatedAt = now()
	}
	if m.UpdatedAt.IsZero() {
		m.UpdatedAt = now()
	}
	_, err := s.r.exec(ctx, `INSERT INTO kv_meta (`+kvMetaCols+`) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (mount, path) DO UPDATE SET max_versions = excluded.max_versions, cas_required = excluded.cas_required,
		delete_version_after = excluded.delete_version_after, sealed_custom = excluded.sealed_custom, updated_at = excluded.updated_at`,
		m.Mount, m.Path, m.MaxVersions, m.CASRequired, m.DeleteVersionAfter.Microseconds(), nullBytes(m.SealedCustom),
		s.r.t(m.CreatedAt), s.r.t(m.UpdatedAt))
	return s.r.wrap(kvOp("put metadata", m.Mount, m.Path), err)
}

// nullBytes stores an empty slice as NULL.
func nullBytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// WriteVersion advances current_version with a conditional UPDATE: on
// PostgreSQL a concurrent writer blocks on the row lock and then sees the
// moved version, matching no row; SQLite serialises writers outright.
func (s kvRepo) WriteVersion(ctx context.Context, v *storage.KVVersion, keep int) error {
	op := kvOp("write version "+strconv.Itoa(v.Version), v.Mount, v.Path)
	if v.Version < 1 || len(v.Sealed) == 0 {
		return fmt.Errorf("%s: a version is at least 1 and holds a value", op)
	}
	if v.CreatedAt.IsZero() {
		v.CreatedAt = now()
	}
	return s.r.atomic(ctx, func(r repos) error {
		res, err := r.exec(ctx, `UPDATE kv_meta SET current_version = ?, updated_at = ? WHERE mount = ? AND path = ? AND current_version = ?`,
			v.Version, r.t(v.CreatedAt), v.Mount, v.Path, v.Version-1)
		if err != nil {
			return r.wrap(op, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return r.wrap(op, err)
		}
		if n == 0 {
			if v.Version != 1 {
				return fmt.Errorf("%s: current version is not %d: %w", op, v.Version-1, storage.ErrConflict)
			}
			if err := r.insert(ctx, op, `INSERT INTO kv_meta (`+kvMetaCols+`) VALUES (?, ?, 1, 0, ?, 0, NULL, ?, ?)`,
				v.Mount, v.Path, false, r.t(v.CreatedAt), r.t(v.CreatedAt)); err != nil {
				return err
			}
		}
		if err := r.insert(ctx, op, `INSERT INTO kv_versions (`+kvVersionCols+`) VALUES (?, ?, ?, ?, ?, NULL, ?)`,
			v.Mount, v.Path, v.Version, v.Sealed, r.t(v.CreatedAt), false); err != nil {
			return err
		}
		if keep > 0 {
			if _, err := r.exec(ctx, `DELETE FROM kv_versions WHERE mount = ? AND path = ? AND version <= ?`,
				v.Mount, v.Path, v.Version-keep); err != nil {
				return r.wrap(op+": prune", err)
			}
		}
		return nil
	})
}

func (s kvRepo) GetVersion(ctx context.Context, mount, path string, version int) (*storage.KVVersion, error) {
	v, err := scanKVVersion(s.r.queryRow(ctx, `SELECT `+kvVersionCols+` FROM kv_versions WHERE mount = ? AND path = ? AND version = ?`,
		mount, path, version))
	if err != nil {
		return nil, s.r.wrap(kvOp("get version "+strconv.Itoa(version), mount, path), err)
	}
	return v, nil
}

// kvReadQuery is KV.Read's one statement: the mount row, the metadata and
// a version, each LEFT JOINed to the requested (mount, path) so that what
// is absent comes back as NULLs; %s is the version's condition.
const kvReadQuery = `SELECT mt.path IS NOT NULL, COALESCE(mt.type, ''), mt.sealed_config, mt.created_at,
	m.mount IS NOT NULL, COALESCE(m.current_version, 0), COALESCE(m.max_versions, 0), COALESCE(m.cas_required, FALSE),
	COALESCE(m.delete_version_after, 0), m.sealed_custom, m.created_at, m.updated_at,
	v.mount IS NOT NULL, COALESCE(v.version, 0), v.sealed, v.created_at, v.deleted_at, COALESCE(v.destroyed, FALSE)
	FROM (SELECT CAST(? AS TEXT) AS mount, CAST(? AS TEXT) AS path) q
	LEFT JOIN mounts mt ON mt.path = q.mount
	LEFT JOIN kv_meta m ON m.mount = q.mount AND m.path = q.path
	LEFT JOIN kv_versions v ON v.mount = m.mount AND v.path = m.path AND v.version = `

// Read implements storage.KV: one query, so one snapshot (one autocommit
// read transaction) instead of one per row.
func (s kvRepo) Read(ctx context.Context, mount, path string, version int) (*storage.KVRead, error) {
	q, args := kvReadQuery+`m.current_version`, []any{mount, path}
	if version != 0 {
		q, args = kvReadQuery+`?`, append(args, version)
	}
	var (
		hasMount, hasMeta, hasVersion bool
		mt                            = storage.Mount{Path: mount}
		m                             = storage.KVMeta{Mount: mount, Path: path}
		v                             = storage.KVVersion{Mount: mount, Path: path}
		dva                           int64
	)
	err := s.r.queryRow(ctx, q, args...).Scan(&hasMount, &mt.Type, &mt.SealedConfig, timeCol{&mt.CreatedAt},
		&hasMeta, &m.CurrentVersion, &m.MaxVersions, &m.CASRequired, &dva, &m.SealedCustom, timeCol{&m.CreatedAt}, timeCol{&m.UpdatedAt},
		&hasVersion, &v.Version, &v.Sealed, timeCol{&v.CreatedAt}, timeCol{&v.DeletedAt}, &v.Destroyed)
	if err != nil {
		return nil, s.r.wrap(kvOp("read", mount, path), err)
	}
	out := &storage.KVRead{}
	if hasMount {
		out.Mount = &mt
	}
	if hasMeta {
		m.DeleteVersionAfter = time.Duration(dva) * time.Microsecond
		out.Meta = &m
	}
	if hasVersion {
		out.Version = &v
	}
	return out, nil
}

func (s kvRepo) ListVersions(ctx context.Context, mount, path string) ([]*storage.KVVersion, error) {
	op := kvOp("list versions", mount, path)
	rows, err := s.r.query(ctx, `SELECT `+kvVersionCols+` FROM kv_versions WHERE mount = ? AND path = ? ORDER BY version`, mount, path)
	if err != nil {
		return nil, s.r.wrap(op, err)
	}
	defer rows.Close()
	var out []*storage.KVVersion
	for rows.Next() {
		v, err := scanKVVersion(rows)
		if err != nil {
			return nil, s.r.wrap(op, err)
		}
		out = append(out, v)
	}
	return out, s.r.wrap(op, rows.Err())
}

// eachVersion runs q once per version inside one transaction and sums the
// rows changed.
func (s kvRepo) eachVersion(ctx context.Context, op string, versions []int, q string, args func(v int) []any) (int, error) {
	total := 0
	err := s.r.atomic(ctx, func(r repos) error {
		total = 0
		for _, v := range versions {
			res, err := r.exec(ctx, q, args(v)...)
			if err != nil {
				return r.wrap(op, err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return r.wrap(op, err)
			}
			total += int(n)
		}
		return nil
	})
	return total, err
}

func (s kvRepo) SetDeleted(ctx context.Context, mount, path string, versions []int, at time.Time) (int, error) {
	at = at.UTC().Truncate(time.Microsecond)
	return s.eachVersion(ctx, kvOp("set deleted", mount, path), versions,
		`UPDATE kv_versions SET deleted_at = ? WHERE mount = ? AND path = ? AND version = ? AND destroyed = ?`,
		func(v int) []any { return []any{s.r.t(at), mount, path, v, false} })
}

func (s kvRepo) Destroy(ctx context.Context, mount, path string, versions []int) (int, error) {
	return s.eachVersion(ctx, kvOp("destroy", mount, path), versions,
		`UPDATE kv_versions SET sealed = NULL, destroyed = ? WHERE mount = ? AND path = ? AND version = ? AND destroyed = ?`,
		func(v int) []any { return []any{true, mount, path, v, false} })
}

func (s kvRepo) DeleteAll(ctx context.Context, mount, path string) error {
	op := kvOp("delete", mount, path)
	return s.r.atomic(ctx, func(r repos) error {
		// Versions first: SQLite enforces the cascade only with foreign
		// keys on, and an explicit delete does not depend on it.
		if _, err := r.exec(ctx, `DELETE FROM kv_versions WHERE mount = ? AND path = ?`, mount, path); err != nil {
			return r.wrap(op, err)
		}
		return r.execOne(ctx, op, `DELETE FROM kv_meta WHERE mount = ? AND path = ?`, mount, path)
	})
}

func (s kvRepo) DeleteMount(ctx context.Context, mount string) error {
	op := "kv: delete mount " + mount
	return s.r.atomic(ctx, func(r repos) error {
		if _, err := r.exec(ctx, `DELETE FROM kv_versions WHERE mount = ?`, mount); err != nil {
			return r.wrap(op, err)
		}
		_, err := r.exec(ctx, `DELETE FROM kv_meta WHERE mount = ?`, mount)
		return r.wrap(op, err)
	})
}

// List matches the prefix with substr, like settings.List, and pages on
// the path (byte order: BINARY in SQLite, COLLATE "C" in PostgreSQL).
func (s kvRepo) List(ctx context.Context, f storage.KVFilter) ([]string, string, error) {
	op := kvOp("list", f.Mount, f.Prefix)
	limit := clampLimit(f.Limit)
	rows, err := s.r.query(ctx, `SELECT path FROM kv_meta WHERE mount = ? AND substr(path, 1, ?) = ? AND path > ?
		ORDER BY path LIMIT ?`, f.Mount, len(f.Prefix), f.Prefix, f.After, limit+1)
	if err != nil {
		return nil, "", s.r.wrap(op, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, "", s.r.wrap(op, err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, "", s.r.wrap(op, err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = out[limit-1]
	}
	return out, next, nil
}

func (s kvRepo) ReplaceSealed(ctx context.Context, mount, path string, version int, old, new []byte) error {
	res, err := s.r.exec(ctx, `UPDATE kv_versions SET sealed = ? WHERE mount = ? AND path = ? AND version = ? AND sealed = ?`,
		new, mount, path, version, old)
	return s.r.casResult(ctx, kvOp("replace sealed", mount, path), res, err,
		`SELECT 1 FROM kv_versions WHERE mount = ? AND path = ? AND version = ?`, mount, path, version)
}

func (s kvRepo) ReplaceCustom(ctx context.Context, mount, path string, old, new []byte) error {
	res, err := s.r.exec(ctx, `UPDATE kv_meta SET sealed_custom = ? WHERE mount = ? AND path = ? AND sealed_custom = ?`,
		new, mount, path, old)
	return s.r.casResult(ctx, kvOp("replace custom metadata", mount, path), res, err,
		`SELECT 1 FROM kv_meta WHERE mount = ? AND path = ?`, mount, path)
}

// kvPage bounds how many ciphertexts EachSealed holds at once.
const kvPage = 200

type kvKey struct {
	mount, path string
	version     int
}

func (s kvRepo) EachSealed(ctx context.Context, visit func(mount, path string, version int, sealed []byte) error) error {
	const op = "kv: each sealed"
	type item struct {
		k      kvKey
		sealed []byte
	}
	page := func(q string, args ...any) ([]item, error) {
		rows, err := s.r.query(ctx, q, append(args, kvPage)...)
		if err != nil {
			return nil, s.r.wrap(op, err)
		}
		defer rows.Close()
		var out []item
		for rows.Next() {
			var it item
			if err := rows.Scan(&it.k.mount, &it.k.path, &it.k.version, &it.sealed); err != nil {
				return nil, s.r.wrap(op, err)
			}
			out = append(out, it)
		}
		return out, s.r.wrap(op, rows.Err())
	}
	// Keyset pagination written out, since row value comparison is not
	// portable enough.
	versions := func(c kvKey) ([]item, error) {
		return page(`SELECT mount, path, version, sealed FROM kv_versions WHERE sealed IS NOT NULL
			AND (mount > ? OR (mount = ? AND path > ?) OR (mount = ? AND path = ? AND version > ?))
			ORDER BY mount, path, version LIMIT ?`, c.mount, c.mount, c.path, c.mount, c.path, c.version)
	}
	custom := func(c kvKey) ([]item, error) {
		return page(`SELECT mount, path, 0, sealed_custom FROM kv_meta WHERE sealed_custom IS NOT NULL
			AND (mount > ? OR (mount = ? AND path > ?)) ORDER BY mount, path LIMIT ?`, c.mount, c.mount, c.path)
	}
	for _, next := range []func(kvKey) ([]item, error){versions, custom} {
		cur := kvKey{version: -1}
		for {
			items, err := next(cur)
			if err != nil {
				return err
			}
			for _, it := range items {
				if err := visit(it.k.mount, it.k.path, it.k.version, it.sealed); err != nil {
					return err
				}
				cur = it.k
			}
			if len(items) < kvPage {
				break
			}
		}
	}
	return nil
}
