-- Top-ups: credits added to a quota subject for its current period (`gpugate quota add`, POST
-- /admin/tenants/<ns>/<name>/topup: the hook a payment system calls). A top-up lowers
-- quota_balances.used by its credits in the same statement that records it here, so the lease
-- arithmetic (available = credits_limit - used - reserved) needs no change; a period reset
-- (used = 0) ends it, which is what a per-period allowance means. Period None never resets.
CREATE TABLE quota_topups (
  subject_kind  text        NOT NULL CHECK (subject_kind IN ('tenant', 'key')),
  subject_id    text        NOT NULL,
  -- Caller-chosen idempotency key (a payment id): a retried top-up with the same reference is
  -- recorded and credited once.
  reference     text        NOT NULL,
  credits       numeric     NOT NULL CHECK (credits > 0),
  -- The balance period the credits were added to.
  period_start  timestamptz NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (subject_kind, subject_id, reference)
);

-- "Top-ups of this subject in this period" (usage show, the admin usage view) reads few rows.
CREATE INDEX quota_topups_subject_period ON quota_topups (subject_kind, subject_id, period_start);
