// One usage event per admitted request even when the proxy retried it on another endpoint (a refused
// connection, and a retryable 503 answered by the first backend), through the real request path and
// the metering writer into real Postgres: the event names the endpoint that answered, and the
// request's quota is charged once.
import type pg from 'pg';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createQuotaManager, type QuotaManager } from '../../dataplane/metering/quota.ts';
import { createMeteringWriter } from '../../dataplane/metering/writer.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import {
  apiKey,
  backend,
  chat,
  cleanupList,
  quietLogger,
  snapshot,
  startUpstream,
  tenant,
  type Upstream,
} from './harness.ts';

describe('metering of retried requests', () => {
  const db = useTestDatabase();
  const cleanups = cleanupList();
  const key = apiKey('team/retry');
  let pool: pg.Pool;
  let writer: ReturnType<typeof createMeteringWriter>;
  let quota: QuotaManager;
  let plane: DataPlane;
  let live: Upstream;
  let busy: Upstream;

  beforeAll(async () => {
    await migrate(db.url);
    pool = suitePool(db, 4);
    writer = createMeteringWriter({ pool, logger: quietLogger, flushIntervalMs: 50 });
    quota = createQuotaManager({ pool, logger: quietLogger, syncIntervalMs: 50 });
    const dead = await startUpstream('dead');
    await dead.close(); // a port with nothing listening
    busy = await cleanups.upstream('busy', (_req, res) => {
      res.writeHead(503, { 'content-type': 'application/json' });
      res.end('{"error":"busy"}');
    });
    live = await cleanups.upstream('live');
    plane = await cleanups.plane({
      usageSink: writer,
      quota,
      outlier: { consecutiveFailures: 1000, baseEjectionMs: 1, maxEjectionMs: 1 },
    });
    const snap = snapshot({
      backends: [
        backend('team/llm', [dead.url, busy.url, live.url], {
          retries: { attempts: 3, retryOnStatus: [503] },
          pricing: { perRequest: 1, perInputToken: 0, perOutputToken: 0 },
        }),
      ],
      tenants: [tenant('team/retry', { quota: { credits: 1000, period: 'Monthly' } })],
      keys: [key.key],
    });
    expect(plane.applySnapshot(snap)).toMatchObject({ accepted: true });
  });
  afterAll(async () => {
    await cleanups.close();
    await quota?.close();
    await writer?.flushAndClose();
    await pool?.end();
  });

  it('records one event per request, naming the endpoint that answered, and charges the quota once', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      const id = `retried-${Date.now()}-${i}`;
      ids.push(id);
      const r = await request(`${plane.url}/v1/chat/completions`, {
        method: 'POST',
        body: chat('m'),
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${key.secret}`,
          'x-request-id': id,
        },
      });
      expect(r.statusCode).toBe(200);
      await r.body.dump();
    }
    // Round robin started requests on each endpoint; those on the dead one and the busy one were retried.
    expect(live.requests).toHaveLength(12);
    expect(busy.requests.length).toBeGreaterThan(0);

    const deadline = Date.now() + 10_000;
    let rows: { request_id: string; endpoint: string; status: number; credits: number }[] = [];
    while (Date.now() < deadline) {
      await writer.flush();
      ({ rows } = await pool.query(
        `SELECT request_id, endpoint, status, credits::float8 AS credits FROM usage_events
         WHERE request_id = ANY($1::text[]) ORDER BY request_id`,
        [ids],
      ));
      if (rows.length >= ids.length) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(rows).toHaveLength(12);
    expect(new Set(rows.map((r) => r.request_id)).size).toBe(12);
    for (const r of rows) expect(r).toMatchObject({ endpoint: 'ep2', status: 200, credits: 1 });

    // Every request was settled locally before its event was recorded, and sync() is a tick that
    // starts after the call, so it writes all 12 settles.
    const used = async () =>
      (
        await pool.query<{ used: number }>(
          `SELECT used::float8 AS used FROM quota_balances WHERE subject_kind = 'tenant' AND subject_id = 'team/retry'`,
        )
      ).rows[0]!.used;
    await quota.sync();
    expect(await used()).toBe(12);
    // Charged once: another tick settles nothing more.
    await quota.sync();
    await quota.sync();
    expect(await used()).toBe(12);
  });
});
