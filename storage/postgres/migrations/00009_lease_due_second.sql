-- SQLite's 00009 re-keys its lease due index by second, so that expiry
-- claims a second's leases in row order. PostgreSQL keeps (state, due_at,
-- id) and claims with FOR UPDATE SKIP LOCKED; this migration changes
-- nothing here and only keeps both backends' schema versions in step.

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
