// Reading usage: GET /v1/usage for the caller's own tenant and key, the admin usage view and
// top-ups on the admin port, against real Postgres, the metering writer and the GPU simulator.
import type pg from 'pg';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createQuotaManager } from '../../dataplane/metering/quota.ts';
import { createMeteringWriter } from '../../dataplane/metering/writer.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import {
  periodUsage,
  quotaState,
  resetPeriodSpend,
  topUp,
  usageReport,
} from '../../dataplane/usage/queries.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { apiKey, backend, chat, quietLogger, snapshot, startPlane, tenant } from './harness.ts';

const db = useTestDatabase();

describe('usage API', () => {
  let pool: pg.Pool;
  let sim: Simulator;
  let plane: DataPlane;
  let writer: ReturnType<typeof createMeteringWriter>;
  const a = apiKey('team/acme', { id: 'team/acme-a' });
  const b = apiKey('team/acme', { id: 'team/acme-b', quota: { credits: 50, period: 'None' } });
  const other = apiKey('team/other', { id: 'team/other-a' });
  const token = 'push-token-for-tests';

  beforeAll(async () => {
    await migrate(db.url);
    pool = suitePool(db, 4);
    sim = await startSimulator({
      host: '127.0.0.1',
      port: 0,
      models: ['small', 'large'],
      prefillMsPerToken: 0,
      decodeMsPerToken: 0,
    });
    writer = createMeteringWriter({ pool, logger: quietLogger, flushIntervalMs: 50 });
    plane = await startPlane({ usageSink: writer, usageDb: pool });
    const snap = snapshot({
      backends: [
        backend('team/sim', [sim.url], {
          pricing: { perRequest: 1, perInputToken: 0, perOutputToken: 0.01 },
        }),
      ],
      tenants: [tenant('team/acme', { quota: { credits: 1000, period: 'Monthly' } }), tenant('team/other')],
      keys: [a.key, b.key, other.key],
    });
    expect(plane.applySnapshot(snap)).toMatchObject({ accepted: true });
    const quota = createQuotaManager({ pool, logger: quietLogger });
    await quota.applySnapshot(snap);
    await quota.close();
  });

  afterAll(async () => {
    await plane?.close({ drainMs: 0 });
    await writer?.flushAndClose();
    await sim?.close();
    await pool?.end();
  });

  async function call(secret: string, model: string): Promise<void> {
    const res = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat(model, { max_tokens: 10 }),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
  }

  interface Totals {
    requests: number;
    outputTokens: number;
    credits: number;
  }
  interface UsageBody {
    tenant: string;
    key: unknown;
    usage: { totals: Totals; byModel: { model: string }[]; byDay: { day: string }[] };
    keyUsage: { totals: Totals };
    quota: { tenant: unknown; key: unknown };
    error: { code: string; message: string };
  }

  async function usage(secret: string | null, query = ''): Promise<{ status: number; body: UsageBody }> {
    const res = await request(plane.url + '/v1/usage' + query, {
      headers: secret ? { authorization: `Bearer ${secret}` } : {},
    });
    return { status: res.statusCode, body: (await res.body.json()) as UsageBody };
  }

  it('answers the caller its own tenant totals, by model and by day, and its own key usage', async () => {
    for (let i = 0; i < 3; i++) await call(a.secret, 'small');
    for (let i = 0; i < 2; i++) await call(b.secret, 'large');
    await call(other.secret, 'small');
    await writer.flush();

    const { status, body } = await usage(a.secret);
    expect(status).toBe(200);
    expect(body.tenant).toBe('team/acme');
    expect(body.key).toEqual({ id: 'team/acme-a', prefix: a.key.prefix });
    expect(body.usage.totals.requests).toBe(5); // the other tenant's request is not in it
    expect(body.usage.byModel.map((m) => m.model).sort()).toEqual(['large', 'small']);
    expect(body.usage.byDay).toHaveLength(1);
    expect(body.usage.byDay[0]?.day).toBe(new Date().toISOString().slice(0, 10));
    expect(body.keyUsage.totals.requests).toBe(3);
    expect(body.keyUsage.totals.outputTokens).toBe(30);
    expect(body.keyUsage.totals.credits).toBeCloseTo(3 * (1 + 0.1));
    expect(body.quota.tenant).toMatchObject({ period: 'Monthly', limit: 1000 });
    expect(body.quota.key).toBeNull(); // key a has no quota of its own
    expect(JSON.stringify(body)).not.toContain(a.secret);

    const bKey = await usage(b.secret);
    expect(bKey.body.keyUsage.totals.requests).toBe(2);
    expect(bKey.body.quota.key).toMatchObject({ period: 'None', limit: 50, periodEnd: null });
  });

  it('refuses callers without a valid key and names a bad day parameter', async () => {
    const none = await usage(null);
    expect(none.status).toBe(401);
    expect(none.body.error.code).toBe('missing_credentials');
    const bad = await usage(a.secret, '?from=2026-13-40');
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toBe('from must be a UTC day as YYYY-MM-DD, got "2026-13-40"');
    const reversed = await usage(a.secret, '?from=2026-02-02&to=2026-02-01');
    expect(reversed.status).toBe(400);
    expect(reversed.body.error.message).toContain('is after');
    const past = await usage(a.secret, '?from=2020-01-01&to=2020-01-31');
    expect(past.body.usage.totals.requests).toBe(0);
  });

  it('serves any tenant on the admin port with the admin token only', async () => {
    const url = `${plane.adminUrl}/admin/tenants/team/other/usage`;
    const denied = await request(url);
    expect(denied.statusCode).toBe(401);
    await denied.body.dump();
    const res = await request(url, { headers: { authorization: `Bearer ${token}` } });
    expect(res.statusCode).toBe(200);
    const body = (await res.body.json()) as { totals: { requests: number }; quota: { tenant: unknown } };
    expect(body.totals.requests).toBe(1);
    expect(body.quota.tenant).toBeNull();
    const perKey = await request(`${plane.adminUrl}/admin/tenants/team/acme/usage?key=acme-b`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(((await perKey.body.json()) as { totals: { requests: number } }).totals.requests).toBe(2);
  });

  it('tops a tenant up once per reference through the admin API, and the lease arithmetic sees it', async () => {
    const before = (await quotaState(pool, 'tenant', 'team/acme'))!;
    const post = (body: unknown) =>
      request(`${plane.adminUrl}/admin/tenants/team/acme/topup`, {
        method: 'POST',
        body: JSON.stringify(body),
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      });
    const first = await post({ credits: 250, reference: 'payment-42' });
    expect(first.statusCode).toBe(200);
    expect(await first.body.json()).toMatchObject({ credited: true, reference: 'payment-42' });
    const retry = await post({ credits: 250, reference: 'payment-42' });
    expect(await retry.body.json()).toMatchObject({ credited: false });
    const after = (await quotaState(pool, 'tenant', 'team/acme'))!;
    expect(after.toppedUp).toBe(250);
    expect(after.available).toBeCloseTo(before.available + 250);
    expect(after.spent).toBeCloseTo(before.spent);

    const bad = await post({ credits: -5 });
    expect(bad.statusCode).toBe(400);
    await bad.body.dump();
    const unknown = await post({ credits: 5 });
    expect(unknown.statusCode).toBe(200); // acme again: a random reference each time
    await unknown.body.dump();
    const noQuota = await request(`${plane.adminUrl}/admin/tenants/team/other/topup`, {
      method: 'POST',
      body: JSON.stringify({ credits: 5 }),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    });
    expect(noQuota.statusCode).toBe(404);
    expect(((await noQuota.body.json()) as { error: { message: string } }).error.message).toContain(
      'tenant team/other has no quota balance',
    );
  });

  it('gives the Tenant status figures of the current period from the same roll-ups', async () => {
    const status = await periodUsage(pool, 'team/acme');
    const report = await usageReport(pool, { tenant: 'team/acme', from: null, to: '2100-01-01' });
    expect(status.requests).toBe(report.totals.requests);
    expect(status.creditsUsed).toBeCloseTo(report.totals.credits);
    expect(status.period).toBe('Monthly');
    // Remaining comes from the quota balance (settled by the quota manager), not from the roll-ups.
    expect(status.creditsRemaining).toBe((await quotaState(pool, 'tenant', 'team/acme'))!.remaining);
  });

  it('resets the period spend and keeps the period top-ups', async () => {
    await topUp(pool, { kind: 'key', id: 'team/acme-b', credits: 10, reference: 'r1' });
    expect(await resetPeriodSpend(pool, 'key', 'team/acme-b')).toBe(true);
    const state = (await quotaState(pool, 'key', 'team/acme-b'))!;
    expect(state).toMatchObject({ spent: 0, toppedUp: 10, remaining: 60 });
    expect(await resetPeriodSpend(pool, 'tenant', 'team/nobody')).toBe(false);
  });
});
