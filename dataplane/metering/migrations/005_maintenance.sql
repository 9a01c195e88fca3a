-- The schedule of the periodic maintenance jobs (dataplane/metering/maintenance.ts, docs/metering.md).
--
-- One row per periodic maintenance job (partitions ahead, retention, expired tasks, expired leases,
-- old settlement records). A data-plane replica runs a job only after moving its last_run forward
-- with a conditional UPDATE (last_run <= now() - interval), which only one concurrent claimer can
-- win, so one replica runs it per interval however many are up.
CREATE TABLE gpugate_maintenance (
  job       text        PRIMARY KEY,
  last_run  timestamptz NOT NULL DEFAULT '-infinity',
  -- Who ran it last and what it did, for `SELECT * FROM gpugate_maintenance` when on call.
  holder    text,
  outcome   jsonb
);
