// Quota admission in the request path against real Postgres: the gateway admits with an estimate,
// settles the usage event's credits once per request (failed requests cost nothing), refuses with
// 429 quota_exceeded naming the period end, and refuses fail-closed tenants with 503 while usage
// cannot be recorded.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createQuotaManager, type QuotaManager } from '../../dataplane/metering/quota.ts';
import { createMeteringWriter, type MeteringWriter } from '../../dataplane/metering/writer.ts';
import type { UsageEvent } from '../../dataplane/metering/usage.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import {
  apiKey,
  backend,
  chat,
  snapshot,
  startPlane,
  startUpstream,
  tenant,
  type Upstream,
} from './harness.ts';

function firstOfNextMonthUtc(now = new Date()): string {
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)).toISOString();
}

describe('quota admission through the gateway', () => {
  const db = useTestDatabase();
  let pool: pg.Pool;
  let quota: QuotaManager;
  let writer: MeteringWriter;
  let plane: DataPlane;
  let up: Upstream;
  let failNext = 0;
  const metered = apiKey('metered');
  const keyCapped = apiKey('free', { quota: { credits: 2, period: 'Daily' } });

  beforeAll(async () => {
    pool = suitePool(db, 4);
    await migrate(pool);
    quota = createQuotaManager({ pool, syncIntervalMs: 50, exhaustedCacheMs: 0 });
    writer = createMeteringWriter({ pool, flushIntervalMs: 50 });
    up = await startUpstream('up', (_req, res) => {
      const status = failNext > 0 ? (failNext--, 500) : 200;
      const payload = JSON.stringify({ usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } });
      res.writeHead(status, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(payload),
      });
      res.end(payload);
    });
    plane = await startPlane({ usageSink: writer, quota });
    const r = plane.applySnapshot(
      snapshot({
        backends: [backend('ns/llm', [up.url], { retries: { attempts: 0, retryOnStatus: [] } })],
        tenants: [tenant('metered', { quota: { credits: 5, period: 'Monthly' } }), tenant('free')],
        keys: [metered.key, keyCapped.key],
      }),
    );
    expect(r.accepted).toBe(true);
  });

  afterAll(async () => {
    await plane.close({ drainMs: 1000 });
    await up.close();
    await writer.flushAndClose(5000);
    await quota.close();
    await pool.end();
  });

  async function call(secret: string) {
    const res = await request(`${plane.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
      body: chat('m'),
    });
    const text = await res.body.text();
    const error =
      res.statusCode >= 400 && res.headers['content-type'] === 'application/json'
        ? (JSON.parse(text) as { error?: { code: string; message: string } }).error
        : undefined;
    return { status: res.statusCode, headers: res.headers, error };
  }

  it('admits a tenant up to its quota, settles failed requests at zero, then answers 429 quota_exceeded naming the period end', async () => {
    // One credit per successful request; the backend failing costs nothing.
    failNext = 2;
    expect((await call(metered.secret)).status).toBe(500);
    expect((await call(metered.secret)).status).toBe(500);
    const statuses = [];
    for (let i = 0; i < 5; i++) statuses.push((await call(metered.secret)).status);
    expect(statuses).toEqual([200, 200, 200, 200, 200]);
    const refused = await call(metered.secret);
    expect(refused.status).toBe(429);
    expect(refused.error?.code).toBe('quota_exceeded');
    expect(refused.error?.message).toContain(firstOfNextMonthUtc());
    expect(Number(refused.headers['retry-after'])).toBeGreaterThan(0);
    // Settled in Postgres: exactly the 5 credits of the successful requests (sync() is a tick that
    // starts after the call, so it sees the last settle).
    await quota.sync();
    const { rows } = await pool.query<{ used: number }>(
      "SELECT used::float8 AS used FROM quota_balances WHERE subject_kind = 'tenant' AND subject_id = 'metered'",
    );
    expect(rows[0]?.used).toBe(5);
  });

  it("enforces a key's own quota inside an unlimited tenant", async () => {
    expect((await call(keyCapped.secret)).status).toBe(200);
    expect((await call(keyCapped.secret)).status).toBe(200);
    const refused = await call(keyCapped.secret);
    expect(refused.status).toBe(429);
    expect(refused.error?.code).toBe('quota_exceeded');
    expect(refused.error?.message).toContain(keyCapped.key.prefix);
  });
});

describe('fail-closed tenants when usage cannot be recorded', () => {
  let plane: DataPlane;
  let up: Upstream;
  const open = apiKey('open');
  const closed = apiKey('closed');

  beforeAll(async () => {
    up = await startUpstream('up');
    // A fake sink: making the real writer's buffer full needs Postgres down for long; its canAdmit
    // policy is tested in metering-writer.test.ts. Here only the gateway's answer is under test.
    const sink = { record: (_e: UsageEvent) => undefined, canAdmit: (failOpen: boolean) => failOpen };
    plane = await startPlane({ usageSink: sink });
    plane.applySnapshot(
      snapshot({
        backends: [backend('ns/llm', [up.url])],
        tenants: [tenant('open'), tenant('closed', { failOpen: false })],
        keys: [open.key, closed.key],
      }),
    );
  });

  afterAll(async () => {
    await plane.close({ drainMs: 1000 });
    await up.close();
  });

  it('refuses a fail-closed tenant with 503 metering_unavailable and serves a fail-open one', async () => {
    const post = (secret: string) =>
      request(`${plane.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
        body: chat('m'),
      });
    const ok = await post(open.secret);
    expect(ok.statusCode).toBe(200);
    await ok.body.dump();
    const refused = await post(closed.secret);
    expect(refused.statusCode).toBe(503);
    expect(refused.headers['retry-after']).toBeDefined();
    expect(((await refused.body.json()) as { error: { code: string } }).error.code).toBe(
      'metering_unavailable',
    );
  });
});
