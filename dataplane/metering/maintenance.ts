// Periodic maintenance of the metering database, run by the data plane: usage_events partitions
// created ahead, partitions past the retention dropped, expired async-task records deleted, expired
// quota leases returned, old settlement records deleted. Every replica ticks; a job runs on the one
// replica whose claim moves the job's last_run in gpugate_maintenance forward (one conditional
// UPDATE, database clock), so each job runs once per interval however many replicas are up, and a
// replica that dies mid-job only delays it to the next interval. Why the data plane and not the
// operator, and why a claim row rather than a session advisory lock: docs/metering.md, "Maintenance".
//
//   const m = createMaintenance({ pool, retentionDays: 90, registry, logger });   // starts ticking
//   await m.runDue();   // one tick now: the jobs this replica claimed, with what they did
//   await m.close();
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { Counter, Registry } from 'prom-client';
import { pino, type Logger } from 'pino';
import type pg from 'pg';
import {
  addUtcDays,
  dropUsagePartitionsBefore,
  ensureUsagePartitions,
  partitionDays,
  utcDay,
} from './migrate.ts';
import { reclaimExpiredLeases } from './quota.ts';
import { deleteExpiredTasks } from './tasks.ts';
import { guardIdleErrors } from './writer.ts';

export type MaintenanceJob =
  'usage_partitions' | 'usage_retention' | 'async_tasks' | 'quota_leases' | 'quota_settlements';

export interface MaintenanceOptions {
  pool: pg.Pool;
  /** Names this replica in gpugate_maintenance.holder. Default host-pid-random. */
  holder?: string;
  /** How often this replica tries to claim due jobs. Default 15 s (jittered ±20%); 0: no timer. */
  tickMs?: number;
  /** Days of usage_events partitions kept ahead of today. Default 7. */
  partitionDaysAhead?: number;
  /**
   * Raw usage events older than this many whole UTC days are dropped (their partitions); daily
   * roll-ups are kept. Default 90; 0 keeps raw events forever.
   */
  retentionDays?: number;
  /** Settlement records (idempotency of quota settles) older than this are deleted. Default 7 days. */
  settlementRetentionMs?: number;
  /** Seconds between two runs of each job, across all replicas. */
  every?: Partial<Record<MaintenanceJob, number>>;
  /** Clock for "today" (partitions, retention). Intervals use the database clock. */
  now?: () => number;
  registry?: Registry;
  logger?: Logger;
}

export interface JobRun {
  job: MaintenanceJob;
  /** What it did: partitions created or dropped, rows deleted, leases returned. */
  outcome: Record<string, unknown>;
  error?: string;
}

export interface Maintenance {
  /** Claim and run the jobs that are due now (for every replica, once per interval). */
  runDue(): Promise<JobRun[]>;
  close(): Promise<void>;
}

const DEFAULT_INTERVALS: Record<MaintenanceJob, number> = {
  usage_partitions: 3600,
  usage_retention: 3600,
  async_tasks: 60,
  // The quota manager of every replica also reclaims on its own sync; this is the backstop that
  // also runs where no quota is enforced.
  quota_leases: 30,
  quota_settlements: 3600,
};

const JOBS = Object.keys(DEFAULT_INTERVALS) as MaintenanceJob[];

// A job is claimed by whoever moves its last_run forward first; the row lock orders concurrent
// claims and the loser re-reads the moved last_run, so it does not match. Works through
// transaction-pooling proxies (no session state).
const CLAIM = `
UPDATE gpugate_maintenance m SET last_run = now(), holder = $3
FROM unnest($1::text[], $2::float8[]) AS j(job, every_s)
WHERE m.job = j.job AND m.last_run <= now() - make_interval(secs => j.every_s)
RETURNING m.job`;

const SEED = `INSERT INTO gpugate_maintenance (job) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`;

const RECORD = `UPDATE gpugate_maintenance SET outcome = $2::jsonb WHERE job = $1`;

/** How many days raw usage events are kept when nothing says otherwise (roll-ups stay). */
export const DEFAULT_RETENTION_DAYS = 90;

export function createMaintenance(options: MaintenanceOptions): Maintenance {
  const { pool } = options;
  const holder = options.holder ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  const tickMs = options.tickMs ?? 15_000;
  const daysAhead = options.partitionDaysAhead ?? 7;
  const retentionDays = options.retentionDays ?? DEFAULT_RETENTION_DAYS;
  const settlementRetentionMs = options.settlementRetentionMs ?? 7 * 86_400_000;
  const every = { ...DEFAULT_INTERVALS, ...options.every };
  const now = options.now ?? Date.now;
  const logger = options.logger ?? pino({ enabled: false });
  const registry = options.registry ?? new Registry();
  for (const [name, value] of [
    ['partitionDaysAhead', daysAhead],
    ['retentionDays', retentionDays],
  ] as const) {
    if (!Number.isInteger(value) || value < 0)
      throw new Error(`maintenance ${name} must be a whole number of days >= 0, got ${value}`);
  }
  for (const job of JOBS) {
    const s = every[job];
    if (!(s > 0)) throw new Error(`maintenance interval of ${job} must be > 0 seconds, got ${s}`);
  }
  guardIdleErrors(pool, logger);

  const runs = new Counter({
    name: 'gpugate_maintenance_runs_total',
    help: 'Maintenance jobs this replica claimed and ran, by job and result (ok, error)',
    labelNames: ['job', 'result'] as const,
    registers: [registry],
  });

  const jobs: Record<MaintenanceJob, () => Promise<Record<string, unknown>>> = {
    async usage_partitions() {
      const days = partitionDays(utcDay(now()), daysAhead);
      await ensureUsagePartitions(pool, days);
      return { through: days[days.length - 1] };
    },
    async usage_retention() {
      if (retentionDays === 0) return { dropped: [] };
      const before = addUtcDays(utcDay(now()), -retentionDays);
      return { before, dropped: await dropUsagePartitionsBefore(pool, before) };
    },
    async async_tasks() {
      return { deleted: await deleteExpiredTasks(pool) };
    },
    async quota_leases() {
      return { reclaimed: await reclaimExpiredLeases(pool) };
    },
    async quota_settlements() {
      const r = await pool.query(
        'DELETE FROM quota_settlements WHERE settled_at < now() - make_interval(secs => $1::float8 / 1000)',
        [settlementRetentionMs],
      );
      return { deleted: r.rowCount ?? 0 };
    },
  };

  let seeded = false;
  let running: Promise<JobRun[]> | null = null;
  let closed = false;

  async function runDueOnce(): Promise<JobRun[]> {
    if (!seeded) {
      await pool.query(SEED, [JOBS]);
      seeded = true;
    }
    const { rows } = await pool.query<{ job: MaintenanceJob }>(CLAIM, [
      JOBS,
      JOBS.map((j) => every[j]),
      holder,
    ]);
    const done: JobRun[] = [];
    // In a fixed order: partitions are created before old ones are dropped.
    for (const job of JOBS) {
      if (!rows.some((r) => r.job === job)) continue;
      let run: JobRun;
      try {
        run = { job, outcome: await jobs[job]() };
        runs.labels(job, 'ok').inc();
        logger.debug({ job, ...run.outcome }, 'maintenance job done');
      } catch (err) {
        // The claim stands: the next try is one interval later, on whichever replica claims it.
        run = { job, outcome: {}, error: err instanceof Error ? err.message : String(err) };
        runs.labels(job, 'error').inc();
        logger.warn({ err, job }, 'maintenance job failed; next try in one interval');
      }
      done.push(run);
      await pool
        .query(RECORD, [job, JSON.stringify({ holder, ...run.outcome, error: run.error ?? null })])
        .catch(() => undefined);
    }
    return done;
  }

  function runDue(): Promise<JobRun[]> {
    running ??= runDueOnce().finally(() => {
      running = null;
    });
    return running;
  }

  let timer: NodeJS.Timeout | null = null;
  function schedule(): void {
    if (closed || tickMs === 0) return;
    timer = setTimeout(
      () => {
        runDue()
          .catch((err: unknown) => logger.warn({ err }, 'maintenance tick failed; retrying'))
          .finally(schedule);
      },
      tickMs * (0.8 + Math.random() * 0.4),
    );
    timer.unref();
  }
  schedule();

  return {
    runDue,
    async close() {
      closed = true;
      if (timer) clearTimeout(timer);
      await running?.catch(() => undefined);
    },
  };
}
