-- Metering and quotas: usage events, daily roll-ups, quota balances and leases, async tasks.
-- Applied once by migrate() under an advisory lock; never edit after release, add 002_... instead.

-- One row per request that reached admission. Range-partitioned by day on `time` so retention is
-- DROP TABLE of old partitions, never a DELETE. Partitions are created ahead by
-- gpugate_ensure_usage_partition() (below), called at migrate time and by the writer.
CREATE TABLE usage_events (
  request_id        text        NOT NULL,
  time              timestamptz NOT NULL,
  tenant            text        NOT NULL,
  key_id            text,
  user_id           text,
  backend           text,
  endpoint          text,
  route             text,
  model             text,
  status            smallint    NOT NULL,
  input_tokens      integer     NOT NULL,
  output_tokens     integer     NOT NULL,
  tokens_estimated  boolean     NOT NULL,
  bytes_in          bigint      NOT NULL,
  bytes_out         bigint      NOT NULL,
  duration_ms       integer     NOT NULL,
  ttfb_ms           integer,
  credits           numeric     NOT NULL,
  -- Idempotency key. A unique index on a partitioned table must contain the partition key, so the
  -- key is (request_id, time), not request_id alone. That is still one row per request: `time` is
  -- the request's arrival time, fixed once by the request path and carried unchanged in every
  -- retry of a flush, so a retried event lands in the same partition and conflicts there.
  PRIMARY KEY (request_id, time)
) PARTITION BY RANGE (time);

-- Per-tenant reports over a time range (usage show, GET /v1/usage drill-down, tenant status) read
-- a few partitions through this instead of scanning them.
CREATE INDEX usage_events_tenant_time ON usage_events (tenant, time);

-- Daily roll-ups: what reports and Tenant status read. Updated in the same statement that inserts
-- events, from the rows actually inserted, so a retried flush cannot count twice. key_id, backend
-- and model are '' when absent (primary key columns cannot be NULL).
CREATE TABLE usage_daily (
  tenant         text    NOT NULL,
  day            date    NOT NULL,
  key_id         text    NOT NULL,
  backend        text    NOT NULL,
  model          text    NOT NULL,
  requests       bigint  NOT NULL,
  input_tokens   bigint  NOT NULL,
  output_tokens  bigint  NOT NULL,
  credits        numeric NOT NULL,
  -- responses with status >= 500 or 0 (no response)
  errors         bigint  NOT NULL,
  -- Tenant-first: "this tenant, these days" is the common report and the upsert's conflict target.
  PRIMARY KEY (tenant, day, key_id, backend, model)
);

-- Per-key reports (key info, GET /v1/usage for a key) without touching other keys' rows.
CREATE INDEX usage_daily_key_day ON usage_daily (key_id, day) WHERE key_id <> '';

-- One row per quota subject: a tenant or an API key with a quota in the snapshot. The snapshot sets
-- credits_limit and period; replicas move used and reserved.
-- available = credits_limit - used - reserved, and a lease is only granted out of `available`, so
-- used + reserved <= credits_limit at every commit (overspend comes only from requests that cost
-- more than they reserved; see docs/metering.md).
CREATE TABLE quota_balances (
  subject_kind   text        NOT NULL CHECK (subject_kind IN ('tenant', 'key')),
  subject_id     text        NOT NULL,
  period         text        NOT NULL CHECK (period IN ('None', 'Daily', 'Monthly')),
  -- Start of the current period (UTC); -infinity for period None, which never resets.
  period_start   timestamptz NOT NULL,
  credits_limit  numeric     NOT NULL CHECK (credits_limit >= 0),
  -- Credits settled by replicas in this period.
  used           numeric     NOT NULL DEFAULT 0,
  -- Sum of the unspent remainder of this period's live leases.
  reserved       numeric     NOT NULL DEFAULT 0,
  -- Size of the latest grant, written by the lease UPDATE itself so that its RETURNING can report
  -- it (RETURNING sees only new values before PostgreSQL 18).
  last_grant     numeric     NOT NULL DEFAULT 0,
  updated_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (subject_kind, subject_id)
);

-- A slice of a balance held by one replica. Deleted when returned; deleted by the reclaim sweep when
-- expired (its remainder goes back to `available`), so a dead replica's slice comes back.
CREATE TABLE quota_leases (
  lease_id      uuid        PRIMARY KEY,
  subject_kind  text        NOT NULL,
  subject_id    text        NOT NULL,
  -- Balance period the lease was taken in: settling into a newer period would charge the wrong one.
  period_start  timestamptz NOT NULL,
  holder        text        NOT NULL,
  granted       numeric     NOT NULL,
  -- Unspent part still counted in quota_balances.reserved.
  remaining     numeric     NOT NULL,
  expires_at    timestamptz NOT NULL,
  FOREIGN KEY (subject_kind, subject_id) REFERENCES quota_balances ON DELETE CASCADE
);

-- The reclaim sweep finds expired leases without scanning live ones.
CREATE INDEX quota_leases_expires ON quota_leases (expires_at);
-- The foreign key's ON DELETE CASCADE and per-subject inspection.
CREATE INDEX quota_leases_subject ON quota_leases (subject_kind, subject_id);

-- Async GPU jobs: which endpoint accepted a task, so any replica routes later status/download
-- requests there, and only for the tenant that submitted it.
CREATE TABLE async_tasks (
  backend     text        NOT NULL,
  task_id     text        NOT NULL,
  endpoint    text        NOT NULL,
  tenant      text        NOT NULL,
  created_at  timestamptz NOT NULL,
  expires_at  timestamptz NOT NULL,
  -- Lookups come as (backend from the route, id from the path): the primary key serves them.
  PRIMARY KEY (backend, task_id)
);

-- The expiry sweep deletes by time.
CREATE INDEX async_tasks_expires ON async_tasks (expires_at);

-- Create (if missing) and attach the usage_events partition for one UTC day. The partition is
-- created as a plain table with a matching CHECK constraint and then ATTACHed: ATTACH PARTITION takes
-- only SHARE UPDATE EXCLUSIVE on usage_events, so inserts keep flowing, and the CHECK lets Postgres
-- skip scanning the new table. (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE.)
-- Callers serialise with pg_advisory_xact_lock so replicas never race on the same day.
CREATE FUNCTION gpugate_ensure_usage_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  part text := format('usage_events_%s', to_char(day, 'YYYYMMDD'));
  lo timestamptz := (day::timestamp AT TIME ZONE 'UTC');
  hi timestamptz := ((day + 1)::timestamp AT TIME ZONE 'UTC');
BEGIN
  IF EXISTS (
    SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'usage_events'::regclass AND c.relname = part
  ) THEN
    RETURN false;
  END IF;
  EXECUTE format('CREATE TABLE IF NOT EXISTS %I (LIKE usage_events INCLUDING DEFAULTS)', part);
  EXECUTE format(
    'ALTER TABLE %I ADD CONSTRAINT %I CHECK (time >= %L AND time < %L)',
    part, part || '_range', lo, hi);
  EXECUTE format(
    'ALTER TABLE usage_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
  EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', part, part || '_range');
  RETURN true;
END $$;
