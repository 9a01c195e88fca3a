-- Idempotent quota settlement (docs/metering.md, "Quotas across replicas").
--
-- A replica settles the spend of each of its leases in numbered steps: (lease_id, seq) is recorded
-- here in the same statement that adds the spend to quota_balances.used, and the spend is only added
-- when that row is new. A settle whose commit succeeded but whose answer was lost is sent again with
-- the same seq and amounts; the row already exists, so nothing is charged twice. Rows outlive their
-- lease (a lease reclaimed after expiry may still receive a late retry) and are deleted by the
-- maintenance sweep after a retention far longer than any retry.
CREATE TABLE quota_settlements (
  lease_id    uuid        NOT NULL,
  seq         bigint      NOT NULL,
  settled_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (lease_id, seq)
);

-- The maintenance sweep deletes old settlement records by time.
CREATE INDEX quota_settlements_settled_at ON quota_settlements (settled_at);
