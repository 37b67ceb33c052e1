-- Expiry in physical order. When many leases fall due within a second or
-- two (a burst minted with one expiry, or whole-second TTLs on leases
-- minted over minutes), ordering them by (due_at, id) visits them in an
-- order unrelated to where their rows are: each lease of a claimed batch
-- was a table page of its own, written by the claim and again by the
-- outcome, plus a random leaf of (state, due_at, id) moved by the claim.
-- Keyed by the due second instead, an index entry ends in the rowid, so
-- the worker claims a second's leases in rowid order: a batch of 500
-- shares some 50 table pages. due_at keeps its microseconds; SQLite's
-- claim and pruning read it from the row only for the current second
-- (storage/sqldb/leases.go), and the expression must stay identical to
-- the dialect's DueSecondExpr for the planner to use the index.
-- PostgreSQL keeps (state, due_at, id).

-- +goose Up
CREATE INDEX leases_state_due_second ON leases (state, due_at / 1000000);
DROP INDEX leases_state_due;

-- +goose Down
CREATE INDEX leases_state_due ON leases (state, due_at, id);
DROP INDEX leases_state_due_second;
