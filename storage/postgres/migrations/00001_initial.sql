-- Times are TIMESTAMPTZ (microsecond precision; NULL for the zero time).
-- String lists and maps are JSON text. Keys use the "C" collation so that
-- ordering and the lease prefix range compare bytes whatever the cluster
-- locale is, and btree indexes serve both.

-- +goose Up
CREATE TABLE certificates (
    serial      TEXT COLLATE "C" PRIMARY KEY,
    issuer_id   TEXT COLLATE "C" NOT NULL,
    subject     TEXT NOT NULL,
    dns_names   TEXT NOT NULL,
    ips         TEXT NOT NULL,
    uris        TEXT NOT NULL,
    emails      TEXT NOT NULL,
    not_before  TIMESTAMPTZ,
    not_after   TIMESTAMPTZ,
    profile     TEXT NOT NULL,
    requester   TEXT NOT NULL,
    der         BYTEA,
    status      TEXT COLLATE "C" NOT NULL,
    revoked_at  TIMESTAMPTZ,
    reason      INTEGER NOT NULL,
    crl_shard   INTEGER NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX certificates_not_after ON certificates (not_after);
CREATE INDEX certificates_status ON certificates (status, serial);
CREATE INDEX certificates_issuer ON certificates (issuer_id, serial);
CREATE INDEX certificates_crl_shard ON certificates (crl_shard, serial);

CREATE TABLE cert_names (
    name   TEXT COLLATE "C" NOT NULL,
    serial TEXT COLLATE "C" NOT NULL REFERENCES certificates (serial) ON DELETE CASCADE,
    PRIMARY KEY (name, serial)
);
-- Serves the cascade when certificates are pruned.
CREATE INDEX cert_names_serial ON cert_names (serial);

CREATE TABLE issuers (
    id         TEXT COLLATE "C" PRIMARY KEY,
    kind       TEXT NOT NULL,
    key_name   TEXT NOT NULL,
    der        BYTEA,
    chain_der  TEXT NOT NULL,
    active     BOOLEAN NOT NULL,
    crl_number BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX issuers_created_at ON issuers (created_at, id);

CREATE TABLE key_blobs (
    name       TEXT COLLATE "C" PRIMARY KEY,
    type       TEXT NOT NULL,
    public_der BYTEA,
    sealed     BYTEA,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE keyring (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    sealed  BYTEA,
    version BIGINT NOT NULL
);

CREATE TABLE tokens (
    id         TEXT COLLATE "C" PRIMARY KEY,
    hash       BYTEA NOT NULL UNIQUE,
    policies   TEXT NOT NULL,
    meta       TEXT NOT NULL,
    expires_at TIMESTAMPTZ,
    uses_left  INTEGER, -- NULL: unlimited; 0: exhausted, about to be deleted
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE mounts (
    path          TEXT COLLATE "C" PRIMARY KEY,
    type          TEXT NOT NULL,
    sealed_config BYTEA,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE leases (
    id                TEXT COLLATE "C" PRIMARY KEY,
    mount             TEXT NOT NULL,
    role              TEXT NOT NULL,
    identity          TEXT NOT NULL,
    issued_at         TIMESTAMPTZ,
    expires_at        TIMESTAMPTZ,
    max_expires_at    TIMESTAMPTZ,
    renewable         BOOLEAN NOT NULL,
    sealed_revocation BYTEA,
    state             TEXT COLLATE "C" NOT NULL,
    attempts          INTEGER NOT NULL,
    next_attempt_at   TIMESTAMPTZ,
    last_error        TEXT NOT NULL,
    claimed_until     TIMESTAMPTZ
);
CREATE INDEX leases_state_expires ON leases (state, expires_at);
CREATE INDEX leases_state_id ON leases (state, id);

CREATE TABLE settings (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA
);

-- +goose Down
DROP TABLE settings;
DROP TABLE leases;
DROP TABLE mounts;
DROP TABLE tokens;
DROP TABLE keyring;
DROP TABLE key_blobs;
DROP TABLE issuers;
DROP TABLE cert_names;
DROP TABLE certificates;
