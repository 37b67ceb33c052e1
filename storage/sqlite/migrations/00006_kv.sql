-- The kv engine: versioned key-value secrets. kv_meta.current_version is
-- the compare-and-set anchor of every write (UPDATE … WHERE
-- current_version = expected). kv_versions.sealed is barrier ciphertext
-- bound to mount, path and version; it is NULL once the version is
-- destroyed. Additive: nothing else changes.

-- +goose Up
CREATE TABLE kv_meta (
    mount                TEXT NOT NULL,
    path                 TEXT NOT NULL,
    current_version      INTEGER NOT NULL,
    max_versions         INTEGER NOT NULL,
    cas_required         INTEGER NOT NULL,
    delete_version_after INTEGER NOT NULL,
    sealed_custom        BLOB,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    PRIMARY KEY (mount, path)
);

CREATE TABLE kv_versions (
    mount      TEXT NOT NULL,
    path       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    sealed     BLOB,
    created_at INTEGER NOT NULL,
    deleted_at INTEGER,
    destroyed  INTEGER NOT NULL,
    PRIMARY KEY (mount, path, version),
    FOREIGN KEY (mount, path) REFERENCES kv_meta (mount, path) ON DELETE CASCADE
);

-- +goose Down
DROP TABLE kv_versions;
DROP TABLE kv_meta;
