-- CRLs are stored, so every node serves the same latest CRL of a shard and
-- CRL numbers never go backwards (issue 18; the schema matches
-- PostgreSQL's). revision counts revocations in the shard; built is the
-- revision the DER reflects (built < revision: regenerate). A row with
-- number 0 only counts revocations: no CRL was signed for it yet.
-- Additive: nothing else changes.

-- +goose Up
CREATE TABLE crls (
    issuer_id   TEXT NOT NULL,
    shard       INTEGER NOT NULL,
    number      INTEGER NOT NULL,
    this_update INTEGER,
    next_update INTEGER,
    der         BLOB,
    fingerprint BLOB,
    revision    INTEGER NOT NULL,
    built       INTEGER NOT NULL,
    PRIMARY KEY (issuer_id, shard)
);

-- +goose Down
DROP TABLE crls;
