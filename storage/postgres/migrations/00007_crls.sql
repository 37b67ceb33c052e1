-- CRLs are stored, so every node of a cluster serves the same latest CRL
-- of a shard and CRL numbers never go backwards when a client switches
-- nodes (issue 18). revision counts revocations in the shard; built is the
-- revision the DER reflects (built < revision: regenerate). A row with
-- number 0 only counts revocations: no CRL was signed for it yet.
-- Additive: nothing else changes.

-- +goose Up
CREATE TABLE crls (
    issuer_id   TEXT NOT NULL,
    shard       INTEGER NOT NULL,
    number      BIGINT NOT NULL,
    this_update TIMESTAMPTZ,
    next_update TIMESTAMPTZ,
    der         BYTEA,
    fingerprint BYTEA,
    revision    BIGINT NOT NULL,
    built       BIGINT NOT NULL,
    PRIMARY KEY (issuer_id, shard)
);

-- +goose Down
DROP TABLE crls;
