// The scheduled maintenance against real Postgres: partitions ahead, retention of raw usage events,
// expired async-task records, expired quota leases and old settlement records, each job run by one
// replica per interval however many try at once.
import type pg from 'pg';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMaintenance, type JobRun, type Maintenance } from '../../dataplane/metering/maintenance.ts';
import { addUtcDays, ensureUsagePartitions, migrate, utcDay } from '../../dataplane/metering/migrate.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';

describe('scheduled maintenance', () => {
  const db = useTestDatabase();
  let pool: pg.Pool;
  const pools: pg.Pool[] = [];
  const replicas: Maintenance[] = [];

  beforeAll(async () => {
    pool = suitePool(db, 2);
    await migrate(pool);
  });
  afterAll(async () => {
    await Promise.all(replicas.map((m) => m.close()));
    await Promise.all(pools.map((p) => p.end()));
    await pool.end();
  });

  function replica(retentionDays: number): Maintenance {
    const own = suitePool(db, 2);
    pools.push(own);
    // tickMs 0: no timer, the test ticks.
    const m = createMaintenance({
      pool: own,
      tickMs: 0,
      retentionDays,
      partitionDaysAhead: 10,
      registry: new Registry(),
    });
    replicas.push(m);
    return m;
  }

  async function partitions(): Promise<string[]> {
    const { rows } = await pool.query<{ name: string }>(
      `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
       WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1`,
    );
    return rows.map((r) => r.name);
  }
  const part = (day: string) => `usage_events_${day.replaceAll('-', '')}`;

  it('runs every job once per interval across three replicas and does what each job is for', async () => {
    const today = utcDay(Date.now());
    const old = addUtcDays(today, -40);
    const recent = addUtcDays(today, -10);
    await ensureUsagePartitions(pool, [old, recent]);
    await pool.query(
      `INSERT INTO usage_events (request_id, time, tenant, status, input_tokens, output_tokens,
         tokens_estimated, bytes_in, bytes_out, duration_ms, credits)
       VALUES ('old-1', $1, 'ns/t', 200, 1, 1, false, 1, 1, 1, 1), ('recent-1', $2, 'ns/t', 200, 1, 1, false, 1, 1, 1, 1)`,
      [`${old}T12:00:00Z`, `${recent}T12:00:00Z`],
    );
    await pool.query(
      `INSERT INTO async_tasks (backend, task_id, endpoint, tenant, created_at, expires_at) VALUES
         ('ns/b', 'expired', 'e1', 'ns/t', now() - interval '2 hours', now() - interval '1 hour'),
         ('ns/b', 'live', 'e1', 'ns/t', now(), now() + interval '1 hour')`,
    );
    await pool.query(
      `INSERT INTO quota_balances (subject_kind, subject_id, period, period_start, credits_limit, used, reserved)
       VALUES ('tenant', 'ns/t', 'None', '-infinity', 100, 10, 30)`,
    );
    await pool.query(
      `INSERT INTO quota_leases (lease_id, subject_kind, subject_id, period_start, holder, granted, remaining, expires_at) VALUES
         (gen_random_uuid(), 'tenant', 'ns/t', '-infinity', 'dead', 20, 20, now() - interval '1 minute'),
         (gen_random_uuid(), 'tenant', 'ns/t', '-infinity', 'alive', 10, 10, now() + interval '1 minute')`,
    );
    await pool.query(
      `INSERT INTO quota_settlements (lease_id, seq, settled_at) VALUES
         (gen_random_uuid(), 1, now() - interval '8 days'), (gen_random_uuid(), 1, now())`,
    );

    const three = [replica(30), replica(30), replica(30)];
    const runs: JobRun[][] = await Promise.all(three.map((m) => m.runDue()));
    const jobs = runs.flat().map((r) => r.job);
    // Each job exactly once, whichever replica claimed it.
    expect([...jobs].sort()).toEqual([
      'async_tasks',
      'quota_leases',
      'quota_settlements',
      'usage_partitions',
      'usage_retention',
    ]);
    const byJob = new Map(runs.flat().map((r) => [r.job, r]));
    for (const r of byJob.values()) expect(r.error).toBeUndefined();
    expect(byJob.get('usage_retention')!.outcome).toMatchObject({ dropped: [part(old)] });
    expect(byJob.get('async_tasks')!.outcome).toEqual({ deleted: 1 });
    expect(byJob.get('quota_leases')!.outcome).toEqual({ reclaimed: 1 });
    expect(byJob.get('quota_settlements')!.outcome).toEqual({ deleted: 1 });

    const names = await partitions();
    expect(names).not.toContain(part(old));
    expect(names).toContain(part(recent));
    expect(names).toContain(part(addUtcDays(today, 10)));
    const events = await pool.query<{ request_id: string }>('SELECT request_id FROM usage_events');
    expect(events.rows.map((r) => r.request_id)).toEqual(['recent-1']);
    const tasks = await pool.query<{ task_id: string }>('SELECT task_id FROM async_tasks');
    expect(tasks.rows.map((r) => r.task_id)).toEqual(['live']);
    const balance = await pool.query<{ reserved: number }>(
      `SELECT reserved::float8 AS reserved FROM quota_balances WHERE subject_id = 'ns/t'`,
    );
    expect(balance.rows[0]!.reserved).toBe(10);
    const recorded = await pool.query<{ job: string; holder: string }>(
      'SELECT job, holder FROM gpugate_maintenance WHERE outcome IS NOT NULL',
    );
    expect(recorded.rows).toHaveLength(5);

    // Within the interval nobody runs anything again.
    const again = await Promise.all(three.map((m) => m.runDue()));
    expect(again.flat()).toEqual([]);

    // Once a job's interval has passed (moved back here instead of waiting), exactly one replica runs it.
    await pool.query(
      `UPDATE gpugate_maintenance SET last_run = now() - interval '2 minutes' WHERE job = 'async_tasks'`,
    );
    const later = await Promise.all(three.map((m) => m.runDue()));
    expect(later.flat().map((r) => r.job)).toEqual(['async_tasks']);
  });

  it('refuses a bad setting naming it, the value and what is allowed', () => {
    expect(() => createMaintenance({ pool, tickMs: 0, retentionDays: -1 })).toThrow(
      'maintenance retentionDays must be a whole number of days >= 0, got -1',
    );
    expect(() => createMaintenance({ pool, tickMs: 0, every: { async_tasks: 0 } })).toThrow(
      'maintenance interval of async_tasks must be > 0 seconds, got 0',
    );
  });
});
