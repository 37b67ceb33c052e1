-- Times are INTEGER microseconds since the Unix epoch in UTC (NULL for the
-- zero time): exact at microsecond precision, ordered, cheap to compare.
-- String lists and maps are JSON text. TEXT compares with the BINARY
-- collation, i.e. byte order, which the lease prefix range relies on.

-- +goose Up
CREATE TABLE certificates (
    serial      TEXT PRIMARY KEY,
    issuer_id   TEXT NOT NULL,
    subject     TEXT NOT NULL,
    dns_names   TEXT NOT NULL,
    ips         TEXT NOT NULL,
    uris        TEXT NOT NULL,
    emails      TEXT NOT NULL,
    not_before  INTEGER,
    not_after   INTEGER,
    profile     TEXT NOT NULL,
    requester   TEXT NOT NULL,
    der         BLOB,
    status      TEXT NOT NULL,
    revoked_at  INTEGER,
    reason      INTEGER NOT NULL,
    crl_shard   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX certificates_not_after ON certificates (not_after);
CREATE INDEX certificates_status ON certificates (status, serial);
CREATE INDEX certificates_issuer ON certificates (issuer_id, serial);
CREATE INDEX certificates_crl_shard ON certificates (crl_shard, serial);

CREATE TABLE cert_names (
    name   TEXT NOT NULL,
    serial TEXT NOT NULL REFERENCES certificates (serial) ON DELETE CASCADE,
    PRIMARY KEY (name, serial)
);
-- Serves the cascade when certificates are pruned.
CREATE INDEX cert_names_serial ON cert_names (serial);

CREATE TABLE issuers (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    key_name   TEXT NOT NULL,
    der        BLOB,
    chain_der  TEXT NOT NULL,
    active     INTEGER NOT NULL,
    crl_number INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX issuers_created_at ON issuers (created_at, id);

CREATE TABLE key_blobs (
    name       TEXT PRIMARY KEY,
    type       TEXT NOT NULL,
    public_der BLOB,
    sealed     BLOB,
    created_at INTEGER NOT NULL
);

CREATE TABLE keyring (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    sealed  BLOB,
    version INTEGER NOT NULL
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    hash       BLOB NOT NULL UNIQUE,
    policies   TEXT NOT NULL,
    meta       TEXT NOT NULL,
    expires_at INTEGER,
    uses_left  INTEGER, -- NULL: unlimited; 0: exhausted, about to be deleted
    created_at INTEGER NOT NULL
);

CREATE TABLE mounts (
    path          TEXT PRIMARY KEY,
    type          TEXT NOT NULL,
    sealed_config BLOB,
    created_at    INTEGER NOT NULL
);

CREATE TABLE leases (
    id                TEXT PRIMARY KEY,
    mount             TEXT NOT NULL,
    role              TEXT NOT NULL,
    identity          TEXT NOT NULL,
    issued_at         INTEGER,
    expires_at        INTEGER,
    max_expires_at    INTEGER,
    renewable         INTEGER NOT NULL,
    sealed_revocation BLOB,
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    next_attempt_at   INTEGER,
    last_error        TEXT NOT NULL,
    claimed_until     INTEGER
);
CREATE INDEX leases_state_expires ON leases (state, expires_at);
CREATE INDEX leases_state_id ON leases (state, id);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value BLOB
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
