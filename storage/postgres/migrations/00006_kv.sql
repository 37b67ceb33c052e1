-- The kv engine: versioned key-value secrets. kv_meta.current_version is
-- the compare-and-set anchor of every write (UPDATE … WHERE
-- current_version = expected: a concurrent writer waits for the row lock
-- and then finds the version moved on). kv_versions.sealed is barrier
-- ciphertext bound to mount, path and version; it is NULL once the version
-- is destroyed. Paths use the "C" collation so listing is byte-ordered.
-- Additive: nothing else changes.

-- +goose Up
CREATE TABLE kv_meta (
    mount                TEXT COLLATE "C" NOT NULL,
    path                 TEXT COLLATE "C" NOT NULL,
    current_version      BIGINT NOT NULL,
    max_versions         BIGINT NOT NULL,
    cas_required         BOOLEAN NOT NULL,
    delete_version_after BIGINT NOT NULL,
    sealed_custom        BYTEA,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (mount, path)
);

CREATE TABLE kv_versions (
    mount      TEXT COLLATE "C" NOT NULL,
    path       TEXT COLLATE "C" NOT NULL,
    version    BIGINT NOT NULL,
    sealed     BYTEA,
    created_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ,
    destroyed  BOOLEAN NOT NULL,
    PRIMARY KEY (mount, path, version),
    FOREIGN KEY (mount, path) REFERENCES kv_meta (mount, path) ON DELETE CASCADE
);

-- +goose Down
DROP TABLE kv_versions;
DROP TABLE kv_meta;
