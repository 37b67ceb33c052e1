package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// ---- issuers

type issuers struct{ r repos }

const issuerCols = `id, kind, key_name, der, chain_der, active, crl_number, created_at`

func scanIssuer(sc rowScanner) (*storage.Issuer, error) {
	var is storage.Issuer
	err := sc.Scan(&is.ID, &is.Kind, &is.KeyName, &is.DER, jsonCol{&is.ChainDER},
		&is.Active, &is.CRLNumber, timeCol{&is.CreatedAt})
	if err != nil {
		return nil, err
	}
	return &is, nil
}

// put records an issuer. A zero CreatedAt is set to now, in is too.
func (s issuers) put(ctx context.Context, is *storage.Issuer) error {
	op := "issuers: put " + is.ID
	if is.CreatedAt.IsZero() {
		is.CreatedAt = now()
	}
	chain, err := jsonText(is.ChainDER)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return s.r.insert(ctx, op, `INSERT INTO issuers (`+issuerCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		is.ID, is.Kind, is.KeyName, is.DER, chain, is.Active, is.CRLNumber, s.r.t(is.CreatedAt))
}

func (s issuers) Get(ctx context.Context, id string) (*storage.Issuer, error) {
	is, err := scanIssuer(s.r.queryRow(ctx, `SELECT `+issuerCols+` FROM issuers WHERE id = ?`, id))
	if err != nil {
		return nil, s.r.wrap("issuers: get "+id, err)
	}
	return is, nil
}

func (s issuers) List(ctx context.Context) ([]*storage.Issuer, error) {
	const op = "issuers: list"
	out, err := queryAll(ctx, s.r, scanIssuer, `SELECT `+issuerCols+` FROM issuers ORDER BY created_at, id`)
	return out, s.r.wrap(op, err)
}

func (s issuers) setActive(ctx context.Context, id string, active bool) error {
	return s.r.execOne(ctx, "issuers: set active "+id, `UPDATE issuers SET active = ? WHERE id = ?`, active, id)
}

// nextCRLNumber increments in one statement, so concurrent callers (on any
// node) each get a distinct number.
func (s issuers) nextCRLNumber(ctx context.Context, id string) (int64, error) {
	var n int64
	err := s.r.queryRow(ctx, `UPDATE issuers SET crl_number = crl_number + 1 WHERE id = ? RETURNING crl_number`, id).Scan(&n)
	if err != nil {
		return 0, s.r.wrap("issuers: next CRL number "+id, err)
	}
	return n, nil
}

// ---- key blobs

type keyBlobs struct{ r repos }

const keyBlobCols = `name, type, public_der, sealed, created_at`

func scanKeyBlob(sc rowScanner) (*storage.KeyBlob, error) {
	var k storage.KeyBlob
	if err := sc.Scan(&k.Name, &k.Type, &k.PublicDER, &k.Sealed, timeCol{&k.CreatedAt}); err != nil {
		return nil, err
	}
	return &k, nil
}

// put stores a sealed key. A zero CreatedAt is set to now, in k too.
func (s keyBlobs) put(ctx context.Context, k *storage.KeyBlob) error {
	if k.CreatedAt.IsZero() {
		k.CreatedAt = now()
	}
	return s.r.insert(ctx, "key blobs: put "+k.Name, `INSERT INTO key_blobs (`+keyBlobCols+`) VALUES (?, ?, ?, ?, ?)`,
		k.Name, k.Type, k.PublicDER, k.Sealed, s.r.t(k.CreatedAt))
}

func (s keyBlobs) replaceSealed(ctx context.Context, name string, old, new []byte) error {
	res, err := s.r.exec(ctx, `UPDATE key_blobs SET sealed = ? WHERE name = ? AND sealed = ?`, new, name, old)
	return s.r.casResult(ctx, "key blobs: replace sealed "+name, res, err, `SELECT 1 FROM key_blobs WHERE name = ?`, name)
}

func (s keyBlobs) delete(ctx context.Context, name string) error {
	return s.r.execOne(ctx, "key blobs: delete "+name, `DELETE FROM key_blobs WHERE name = ?`, name)
}

func (s keyBlobs) Get(ctx context.Context, name string) (*storage.KeyBlob, error) {
	k, err := scanKeyBlob(s.r.queryRow(ctx, `SELECT `+keyBlobCols+` FROM key_blobs WHERE name = ?`, name))
	if err != nil {
		return nil, s.r.wrap("key blobs: get "+name, err)
	}
	return k, nil
}

func (s keyBlobs) List(ctx context.Context) ([]*storage.KeyBlob, error) {
	const op = "key blobs: list"
	out, err := queryAll(ctx, s.r, scanKeyBlob, `SELECT `+keyBlobCols+` FROM key_blobs ORDER BY name`)
	return out, s.r.wrap(op, err)
}

// ---- keyring

type keyring struct{ r repos }

func (s keyring) Get(ctx context.Context) ([]byte, int64, error) {
	var sealed []byte
	var v int64
	err := s.r.queryRow(ctx, `SELECT sealed, version FROM keyring WHERE id = 1`).Scan(&sealed, &v)
	if err != nil {
		return nil, 0, s.r.wrap("keyring: get", err)
	}
	return sealed, v, nil
}

// put is a compare-and-swap on the version: the insert of version 1 adds no
// row if a keyring exists, and the update matches no row if
// another writer moved the version on.
func (s keyring) put(ctx context.Context, sealed []byte, prevVersion int64) (int64, error) {
	const op = "keyring: put"
	if prevVersion == 0 {
		if err := s.r.insert(ctx, op, `INSERT INTO keyring (id, sealed, version) VALUES (1, ?, 1)`, sealed); err != nil {
			return 0, err
		}
		return 1, nil
	}
	var v int64
	err := s.r.queryRow(ctx, `UPDATE keyring SET sealed = ?, version = version + 1
		WHERE id = 1 AND version = ? RETURNING version`, sealed, prevVersion).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%s: version %d is not current: %w", op, prevVersion, storage.ErrConflict)
	}
	if err != nil {
		return 0, s.r.wrap(op, err)
	}
	return v, nil
}

// ---- tokens

type tokens struct{ r repos }

// uses_left is NULL for unlimited tokens so that 0 can mean "exhausted"
// in the row while Use deletes it; Get never returns an exhausted token.
const tokenCols = `id, hash, policies, meta, expires_at, uses_left, created_at`

func scanToken(sc rowScanner) (*storage.Token, error) {
	var t storage.Token
	var uses sql.NullInt64
	err := sc.Scan(&t.ID, &t.Hash, jsonCol{&t.Policies}, jsonCol{&t.Meta},
		timeCol{&t.ExpiresAt}, &uses, timeCol{&t.CreatedAt})
	if err != nil {
		return nil, err
	}
	t.UsesLeft = int(uses.Int64)
	return &t, nil
}

// put stores a token. A zero CreatedAt is set to now, in t too.
func (s tokens) put(ctx context.Context, t *storage.Token) error {
	op := "tokens: put " + t.ID
	if t.CreatedAt.IsZero() {
		t.CreatedAt = now()
	}
	pol, err := jsonText(t.Policies)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	meta, err := jsonText(t.Meta)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	var uses any // NULL: unlimited
	if t.UsesLeft > 0 {
		uses = t.UsesLeft
	}
	return s.r.insert(ctx, op, `INSERT INTO tokens (`+tokenCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		t.ID, t.Hash, pol, meta, s.r.t(t.ExpiresAt), uses, s.r.t(t.CreatedAt))
}

func (s tokens) GetByHash(ctx context.Context, hash []byte) (*storage.Token, error) {
	t, err := scanToken(s.r.queryRow(ctx, `SELECT `+tokenCols+` FROM tokens
		WHERE hash = ? AND (uses_left IS NULL OR uses_left > 0)`, hash))
	if err != nil {
		// The hash identifies a secret: never put it in an error.
		return nil, s.r.wrap("tokens: get by hash", err)
	}
	return t, nil
}

func (s tokens) Get(ctx context.Context, id string) (*storage.Token, error) {
	t, err := scanToken(s.r.queryRow(ctx, `SELECT `+tokenCols+` FROM tokens
		WHERE id = ? AND (uses_left IS NULL OR uses_left > 0)`, id))
	if err != nil {
		return nil, s.r.wrap("tokens: get "+id, err)
	}
	return t, nil
}

func (s tokens) delete(ctx context.Context, id string) error {
	return s.r.execOne(ctx, "tokens: delete "+id, `DELETE FROM tokens WHERE id = ?`, id)
}

// use consumes one use in a single statement, so concurrent callers can
// never spend more uses than the token has. The token that reaches zero is
// then deleted; until then Get hides it.
func (s tokens) use(ctx context.Context, id string) error {
	op := "tokens: use " + id
	var left sql.NullInt64
	err := s.r.queryRow(ctx, `UPDATE tokens
		SET uses_left = CASE WHEN uses_left IS NULL THEN NULL ELSE uses_left - 1 END
		WHERE id = ? AND (uses_left IS NULL OR uses_left > 0) RETURNING uses_left`, id).Scan(&left)
	if err != nil {
		return s.r.wrap(op, err)
	}
	if left.Valid && left.Int64 == 0 {
		if _, err := s.r.exec(ctx, `DELETE FROM tokens WHERE id = ? AND uses_left = 0`, id); err != nil {
			return s.r.wrap(op+": delete exhausted", err)
		}
	}
	return nil
}

// extend moves a token's expiry in one statement; only a token that has
// an expiry (a renewal never makes a token immortal, nor an immortal one
// mortal through this path).
func (s tokens) extend(ctx context.Context, id string, expiresAt time.Time) error {
	op := "tokens: extend " + id
	if expiresAt.IsZero() {
		return fmt.Errorf("%s: a zero expiry: %w", op, storage.ErrConflict)
	}
	return s.r.execOne(ctx, op, `UPDATE tokens SET expires_at = ?
		WHERE id = ? AND expires_at IS NOT NULL AND (uses_left IS NULL OR uses_left > 0)`, s.r.t(expiresAt), id)
}

// ---- mounts

type mounts struct{ r repos }

const mountCols = `path, type, sealed_config, created_at`

func scanMount(sc rowScanner) (*storage.Mount, error) {
	var m storage.Mount
	if err := sc.Scan(&m.Path, &m.Type, &m.SealedConfig, timeCol{&m.CreatedAt}); err != nil {
		return nil, err
	}
	return &m, nil
}

// put inserts a mount or replaces its type and configuration, keeping the
// original CreatedAt. A zero CreatedAt is set to now, in m too.
func (s mounts) put(ctx context.Context, m *storage.Mount) error {
	if m.CreatedAt.IsZero() {
		m.CreatedAt = now()
	}
	_, err := s.r.exec(ctx, `INSERT INTO mounts (`+mountCols+`) VALUES (?, ?, ?, ?)
		ON CONFLICT (path) DO UPDATE SET type = excluded.type, sealed_config = excluded.sealed_config`,
		m.Path, m.Type, m.SealedConfig, s.r.t(m.CreatedAt))
	return s.r.wrap("mounts: put "+m.Path, err)
}

func (s mounts) replaceSealed(ctx context.Context, path string, old, new []byte) error {
	res, err := s.r.exec(ctx, `UPDATE mounts SET sealed_config = ? WHERE path = ? AND sealed_config = ?`, new, path, old)
	return s.r.casResult(ctx, "mounts: replace sealed "+path, res, err, `SELECT 1 FROM mounts WHERE path = ?`, path)
}

func (s mounts) Get(ctx context.Context, path string) (*storage.Mount, error) {
	m, err := scanMount(s.r.queryRow(ctx, `SELECT `+mountCols+` FROM mounts WHERE path = ?`, path))
	if err != nil {
		return nil, s.r.wrap("mounts: get "+path, err)
	}
	return m, nil
}

func (s mounts) List(ctx context.Context) ([]*storage.Mount, error) {
	const op = "mounts: list"
	out, err := queryAll(ctx, s.r, scanMount, `SELECT `+mountCols+` FROM mounts ORDER BY path`)
	return out, s.r.wrap(op, err)
}

func (s mounts) Hold(ctx context.Context, path string) error {
	lock := ""
	if !s.r.s.d.SerializeWrites() {
		lock = " FOR KEY SHARE"
	}
	var one int
	return s.r.wrap("mounts: hold "+path, s.r.queryRow(ctx, `SELECT 1 FROM mounts WHERE path = ?`+lock, path).Scan(&one))
}

func (s mounts) delete(ctx context.Context, path string) error {
	return s.r.execOne(ctx, "mounts: delete "+path, `DELETE FROM mounts WHERE path = ?`, path)
}

// ---- settings

type settings struct{ r repos }

func (s settings) Get(ctx context.Context, key string) ([]byte, error) {
	var v []byte
	if err := s.r.queryRow(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&v); err != nil {
		return nil, s.r.wrap("settings: get "+key, err)
	}
	return v, nil
}

func (s settings) replace(ctx context.Context, key string, old, new []byte) error {
	const op = "settings: replace "
	res, err := s.r.exec(ctx, `UPDATE settings SET value = ? WHERE key = ? AND value = ?`, new, key, old)
	return s.r.casResult(ctx, op+key, res, err, `SELECT 1 FROM settings WHERE key = ?`, key)
}

func (s settings) putIfAbsent(ctx context.Context, key string, value []byte) error {
	return s.r.insert(ctx, "settings: put if absent "+key, `INSERT INTO settings (key, value) VALUES (?, ?)`, key, value)
}

func (s settings) put(ctx context.Context, key string, value []byte) error {
	_, err := s.r.exec(ctx, `INSERT INTO settings (key, value) VALUES (?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
	return s.r.wrap("settings: put "+key, err)
}

func (s settings) delete(ctx context.Context, key string) error {
	return s.r.execOne(ctx, "settings: delete "+key, `DELETE FROM settings WHERE key = ?`, key)
}

// List matches the prefix with substr rather than LIKE (no escaping of % and
// _) or a range (PostgreSQL's collation need not order bytes).
func (s settings) List(ctx context.Context, prefix string) ([]string, error) {
	rows, err := s.r.query(ctx, `SELECT key FROM settings WHERE substr(key, 1, ?) = ? ORDER BY key`, len(prefix), prefix)
	if err != nil {
		return nil, s.r.wrap("settings: list "+prefix, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, s.r.wrap("settings: list "+prefix, err)
		}
		out = append(out, k)
	}
	return out, s.r.wrap("settings: list "+prefix, rows.Err())
}

// casResult turns the result of a compare-and-swap UPDATE into nil,
// ErrConflict (the row exists but changed) or ErrNotFound.
func (r repos) casResult(ctx context.Context, op string, res sql.Result, err error, existsQuery string, args ...any) error {
	if err != nil {
		return r.wrap(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return r.wrap(op, err)
	}
	if n == 1 {
		return nil
	}
	var one int
	if err := r.queryRow(ctx, existsQuery, args...).Scan(&one); err != nil {
		return r.wrap(op, err)
	}
	return fmt.Errorf("%s: %w", op, storage.ErrConflict)
}
