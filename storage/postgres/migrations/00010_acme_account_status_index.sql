-- An account's pending orders (its pending limit, checked on every new
-- order) and its authorizations of one identifier in one status (reused
-- rather than created anew) were found through (kind, account_id, id),
-- which holds every order and authorization the account ever had: each new
-- order read them all, so orders slowed down as an account aged. Keyed by
-- status and ref as well, this index finds exactly the rows asked for.

-- +goose Up
CREATE INDEX acme_objects_account_status ON acme_objects (kind, account_id, status, ref, id);

-- +goose Down
DROP INDEX acme_objects_account_status;
