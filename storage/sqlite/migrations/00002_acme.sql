-- ACME server objects and anti-replay nonces. Objects are stored as opaque
-- data (the acme package's encoding) with the columns the server looks them
-- up by; lookup_key is NULL when empty, so the unique index skips it.

-- +goose Up
CREATE TABLE acme_objects (
    kind        TEXT NOT NULL,
    id          TEXT NOT NULL,
    provisioner TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    lookup_key  TEXT,
    ref         TEXT NOT NULL,
    status      TEXT NOT NULL,
    expires_at  INTEGER,
    version     INTEGER NOT NULL,
    data        BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE UNIQUE INDEX acme_objects_lookup ON acme_objects (kind, provisioner, lookup_key);
CREATE INDEX acme_objects_account ON acme_objects (kind, account_id, id);
CREATE INDEX acme_objects_expires ON acme_objects (kind, expires_at);

CREATE TABLE acme_nonces (
    nonce      TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX acme_nonces_expires ON acme_nonces (expires_at);

-- +goose Down
DROP TABLE acme_nonces;
DROP TABLE acme_objects;
