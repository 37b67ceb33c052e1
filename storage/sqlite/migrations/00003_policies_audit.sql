-- Access policies and the hash-chained audit log. Independent of 00002.
-- audit_head is a single row that every append updates first: on SQLite the
-- write lock serialises appends anyway; the row exists so both backends run
-- the same statements.

-- +goose Up
CREATE TABLE policies (
    name     TEXT PRIMARY KEY,
    document BLOB NOT NULL
);

CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    time      INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL,
    record    BLOB NOT NULL
);

CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, X'');

-- +goose Down
DROP TABLE audit_head;
DROP TABLE audit_log;
DROP TABLE policies;
