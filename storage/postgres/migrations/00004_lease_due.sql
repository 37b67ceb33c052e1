-- Lease expiry without scans. due_at is, for an active lease, the time the
-- expiry worker may next claim it: its expiry, a failed attempt's retry
-- time, or the end of the claim holding it; for a revoked or irrevocable
-- lease, the time it was closed (revoked leases are pruned by it). One
-- index (state, due_at, id) then serves claiming (the earliest due first,
-- ties by id, without sorting) and pruning as range scans, however many
-- leases are active, retrying, in flight or kept after revocation. It
-- replaces (state, expires_at), which the claim query no longer uses.
-- leases_claimed holds only claimed rows (a batch or two per node).
-- (state, id) becomes two partial indexes, of active and of irrevocable
-- leases (what List and CountActive select, with the state as a literal):
-- revoking a lease then deletes one index entry instead of moving it to
-- the revoked part of (state, id), a page write saved per revocation at a
-- random place (lease ids are random). Listing revoked leases by state is
-- no longer indexed; nothing but tests does it.

-- +goose Up
ALTER TABLE leases ADD COLUMN due_at TIMESTAMPTZ;
UPDATE leases SET due_at = CASE
    WHEN state = 'active' THEN GREATEST(expires_at, next_attempt_at, claimed_until)
    ELSE now()
END;
DROP INDEX leases_state_expires;
CREATE INDEX leases_state_due ON leases (state, due_at, id);
CREATE INDEX leases_claimed ON leases (claimed_until) WHERE claimed_until IS NOT NULL;
DROP INDEX leases_state_id;
CREATE INDEX leases_active_id ON leases (state, id) WHERE state = 'active';
CREATE INDEX leases_irrevocable_id ON leases (state, id) WHERE state = 'irrevocable';

-- +goose Down
DROP INDEX leases_irrevocable_id;
DROP INDEX leases_active_id;
CREATE INDEX leases_state_id ON leases (state, id);
DROP INDEX leases_claimed;
DROP INDEX leases_state_due;
CREATE INDEX leases_state_expires ON leases (state, expires_at);
ALTER TABLE leases DROP COLUMN due_at;
