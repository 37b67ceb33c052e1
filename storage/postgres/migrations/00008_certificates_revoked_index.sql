-- Status, issuer and CRL shard are read only for revoked certificates (a
-- shard's CRL, `sigil ca list --revoked`), yet three indexes held every
-- certificate: with random 128-bit serials each issuance wrote a leaf of
-- each at a random place. One partial index of revoked certificates serves
-- the CRL query (issuer, shard, in serial order), another the revoked list
-- in serial order; an issuance, valid by definition, writes neither. The
-- queries name the status as a literal so the planner can use them.

-- +goose Up
DROP INDEX certificates_status;
DROP INDEX certificates_issuer;
DROP INDEX certificates_crl_shard;
CREATE INDEX certificates_revoked ON certificates (issuer_id, crl_shard, serial) WHERE status = 'revoked';
CREATE INDEX certificates_revoked_serial ON certificates (serial) WHERE status = 'revoked';

-- +goose Down
DROP INDEX certificates_revoked_serial;
DROP INDEX certificates_revoked;
CREATE INDEX certificates_crl_shard ON certificates (crl_shard, serial);
CREATE INDEX certificates_issuer ON certificates (issuer_id, serial);
CREATE INDEX certificates_status ON certificates (status, serial);
