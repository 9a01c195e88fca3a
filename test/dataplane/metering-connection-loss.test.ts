// Postgres connections that die under the data plane (an admin's pg_terminate_backend, a failover, a
// restart): idle pooled connections and a connection checked out for a transaction are killed, and the
// process keeps serving and writes the usage it buffered once Postgres answers again. A checked-out
// pg client has no listener of its pool's, so before withPoolClient its 'error' event killed the process
// ("Connection terminated unexpectedly", seen as a flake of the metering writer's restart test).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureUsagePartitions, migrate, PARTITION_LOCK_KEY } from '../../dataplane/metering/migrate.ts';
import { startDataPlaneProcess, type DataPlaneProcess } from '../fixtures/processes.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { apiKey, backend, chat, snapshot, startUpstream, tenant, until, type Upstream } from './harness.ts';

const db = useTestDatabase();

/** A session that holds the usage_events partition lock until released, so a partition check waits. */
async function holdPartitionLock(url: string): Promise<{ release(): Promise<void> }> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => undefined);
  await client.connect();
  await client.query('BEGIN');
  await client.query('SELECT pg_advisory_xact_lock($1)', [PARTITION_LOCK_KEY.toString()]);
  return {
    async release() {
      await client.query('COMMIT');
      await client.end();
    },
  };
}

interface Backend {
  pid: number;
  state: string;
  wait_event_type: string | null;
}

describe('Postgres connections lost under the data plane', () => {
  let admin: pg.Pool;
  beforeAll(async () => {
    await migrate(db.url);
    admin = suitePool(db, 2);
  });
  afterAll(() => admin.end());

  const backendsOf = async (applicationName: string): Promise<Backend[]> =>
    (
      await admin.query<Backend>(
        'SELECT pid, state, wait_event_type FROM pg_stat_activity WHERE application_name = $1',
        [applicationName],
      )
    ).rows;

  const terminate = async (applicationName: string): Promise<number> =>
    (
      await admin.query<{ ok: boolean }>(
        'SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = $1',
        [applicationName],
      )
    ).rows.filter((r) => r.ok).length;

  it('rejects a partition check whose checked-out connection is terminated, and the pool goes on working', async () => {
    const url = new URL(db.url);
    url.searchParams.set('application_name', 'gpugate-loss-inprocess');
    const pool = new pg.Pool({ connectionString: url.toString(), max: 2 });
    pool.on('error', () => undefined);
    const lock = await holdPartitionLock(db.url);
    try {
      const pending = ensureUsagePartitions(pool, ['2031-01-01']);
      const outcome = pending.then(
        () => 'resolved',
        (err: Error) => err.message,
      );
      await until(
        async () => (await backendsOf('gpugate-loss-inprocess')).some((b) => b.wait_event_type === 'Lock'),
        20_000,
        'the partition check waiting for its lock',
      );
      expect(await terminate('gpugate-loss-inprocess')).toBe(1);
      expect(await outcome).toMatch(/terminat/i);
    } finally {
      await lock.release();
    }
    // The broken client was discarded, not returned to the pool: the next check gets a fresh one.
    await ensureUsagePartitions(pool, ['2031-01-01']);
    const { rows } = await pool.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_class WHERE relname = 'usage_events_20310101'",
    );
    expect(rows[0]!.n).toBe(1);
    await pool.end();
  });

  describe('a data-plane process (node dataplane/main.ts --database-url)', () => {
    const APP = 'gpugate-loss-process';
    let up: Upstream;
    let dir: string;
    let proc: DataPlaneProcess;
    const key = apiKey('team/loss');

    beforeAll(async () => {
      // The default answer: a JSON completion with usage, of declared length.
      up = await startUpstream('up');
      dir = mkdtempSync(join(tmpdir(), 'gpugate-connection-loss-'));
      const snapshotFile = join(dir, 'snapshot.json');
      writeFileSync(
        snapshotFile,
        JSON.stringify(
          snapshot({
            backends: [backend('team/llm', [up.url])],
            tenants: [tenant('team/loss')],
            keys: [key.key],
          }),
        ),
      );
      const url = new URL(db.url);
      url.searchParams.set('application_name', APP);
      proc = await startDataPlaneProcess({
        args: ['--snapshot', snapshotFile, '--database-url', url.toString()],
        drainMs: 2000,
        ready: 'snapshot applied',
      });
    });

    afterAll(async () => {
      await proc?.kill('SIGKILL');
      await up?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    const call = async (requestId: string): Promise<number> => {
      const res = await request(`${proc.url}/v1/chat/completions`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${key.secret}`,
          'x-request-id': requestId,
        },
        body: chat('m'),
      });
      await res.body.dump();
      return res.statusCode;
    };

    const storedEvents = async (): Promise<string[]> =>
      (
        await admin.query<{ request_id: string }>(
          "SELECT request_id FROM usage_events WHERE tenant = 'team/loss' ORDER BY request_id",
        )
      ).rows.map((r) => r.request_id);

    it('survives its idle connections and a connection inside a transaction being terminated, then stores the usage it buffered', async () => {
      // An idle pooled connection: GET /v1/usage reads through the pool and gives the connection back.
      const usage = await request(`${proc.url}/v1/usage`, {
        headers: { authorization: `Bearer ${key.secret}` },
      });
      await usage.body.dump();
      expect(usage.statusCode).toBe(200);

      // A checked-out connection: the writer's first flush checks the day's partitions in a
      // transaction, which waits here for the lock this test holds.
      const lock = await holdPartitionLock(db.url);
      let terminated: number;
      try {
        expect(await call('loss-before')).toBe(200);
        await until(
          async () => (await backendsOf(APP)).some((b) => b.wait_event_type === 'Lock'),
          20_000,
          'the writer waiting inside its partition transaction',
        );
        const before = await backendsOf(APP);
        expect(before.some((b) => b.state === 'idle')).toBe(true);
        terminated = await terminate(APP);
      } finally {
        await lock.release();
      }
      expect(terminated).toBeGreaterThanOrEqual(2);
      console.log(`terminated ${terminated} Postgres connections of the data-plane process`);

      // Still serving, still metering: the buffered event and a new one are written once.
      expect(await call('loss-after')).toBe(200);
      const health = await request(`${proc.adminUrl}/healthz`);
      await health.body.dump();
      expect(health.statusCode).toBe(200);
      await until(async () => (await storedEvents()).length >= 2, 20_000, 'both usage events stored');
      expect(await storedEvents()).toEqual(['loss-after', 'loss-before']);
      expect(proc.child.exitCode).toBeNull();
      expect(proc.log()).not.toMatch(/Connection terminated unexpectedly\n\s+at /);

      await proc.kill('SIGTERM');
      expect(await proc.exited).toBe(0);
    });
  });
});
