-- ACME server objects and anti-replay nonces. Objects are stored as opaque
-- data (the acme package's encoding) with the columns the server looks them
-- up by; lookup_key is NULL when empty, so the unique index skips it.

-- +goose Up
CREATE TABLE acme_objects (
    kind        TEXT COLLATE "C" NOT NULL,
    id          TEXT COLLATE "C" NOT NULL,
    provisioner TEXT COLLATE "C" NOT NULL,
    account_id  TEXT COLLATE "C" NOT NULL,
    lookup_key  TEXT COLLATE "C",
    ref         TEXT COLLATE "C" NOT NULL,
    status      TEXT NOT NULL,
    expires_at  TIMESTAMPTZ,
    version     BIGINT NOT NULL,
    data        BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE UNIQUE INDEX acme_objects_lookup ON acme_objects (kind, provisioner, lookup_key);
CREATE INDEX acme_objects_account ON acme_objects (kind, account_id, id);
CREATE INDEX acme_objects_expires ON acme_objects (kind, expires_at);

CREATE TABLE acme_nonces (
    nonce      TEXT COLLATE "C" PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX acme_nonces_expires ON acme_nonces (expires_at);

-- +goose Down
DROP TABLE acme_nonces;
DROP TABLE acme_objects;
