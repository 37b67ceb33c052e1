-- Leases have owners: the stable identity Sigil authenticated when the
-- lease was minted ("token:ID" or a SPIFFE ID), never a value the client
-- asserts. An identity may manage its own leases; others' need sys/leases
-- with sudo. Leases from before this column have no owner ('') and are
-- therefore managed by administrators only. Additive: nothing else changes.

-- +goose Up
ALTER TABLE leases ADD COLUMN owner TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE leases DROP COLUMN owner;
