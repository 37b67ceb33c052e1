-- Access policies and the hash-chained audit log. Independent of 00002.
-- audit_head is a single row that every append updates first: the row lock
-- taken by that UPDATE is held until commit, so appends from several nodes
-- are serialised and each one sees the head its predecessor committed.

-- +goose Up
CREATE TABLE policies (
    name     TEXT COLLATE "C" PRIMARY KEY,
    document BYTEA NOT NULL
);

CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    time      TIMESTAMPTZ NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL,
    record    BYTEA NOT NULL
);

CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash BYTEA NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, ''::bytea);

-- +goose Down
DROP TABLE audit_head;
DROP TABLE audit_log;
DROP TABLE policies;
