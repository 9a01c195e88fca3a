-- Quota settlement idempotency, cheaper (docs/metering.md, "Quotas across replicas").
--
-- 004 recorded every settle step in quota_settlements: one row per lease with spend per sync tick
-- (5 a second per busy tenant per replica), kept for days. Now the step number lives on the lease
-- row: a settle charges only when its step is newer than the lease's settled_seq, decided by the
-- UPDATE itself (so a retry racing its own lost original waits for the row lock and then sees the
-- step as done). quota_settlements keeps one row per deleted lease instead, holding its last settled
-- step, for the one case the lease row cannot answer: a retry that arrives after the lease expired
-- and was reclaimed (an outage longer than the lease TTL).
ALTER TABLE quota_leases
  ADD COLUMN settled_seq bigint NOT NULL DEFAULT 0,
  -- Whether the latest settle step charged, written by the settling UPDATE itself so that its
  -- RETURNING can report it (RETURNING sees only new values before PostgreSQL 18).
  ADD COLUMN last_settle_charged boolean NOT NULL DEFAULT false;
