// Statements that commit in Postgres while their answer is lost on the way back (a loopback TCP proxy
// closes the connection right after the server's ReadyForQuery): the quota settle and the usage-event
// flush are both retried, and both must count once. Real Postgres, real sockets.
import pg from 'pg';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Snapshot } from '../../dataplane/config/snapshot.ts';
import { migrate } from '../../dataplane/metering/migrate.ts';
import {
  createQuotaManager,
  reclaimExpiredLeases,
  type QuotaManager,
} from '../../dataplane/metering/quota.ts';
import type { UsageEvent } from '../../dataplane/metering/usage.ts';
import { createMeteringWriter } from '../../dataplane/metering/writer.ts';
import { startLossyPgProxy, type LossyPgProxy } from '../fixtures/lossy-pg-proxy.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { tenant } from './harness.ts';

const TENANT = 'ns/acme';

function quotas(credits: number): Pick<Snapshot, 'tenants' | 'keys'> {
  return {
    tenants: [tenant(TENANT, { quota: { credits, period: 'None' } })],
    keys: [],
  };
}

async function metric(registry: Registry, name: string): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  return (m?.values ?? []).reduce((sum, v) => sum + Number(v.value), 0);
}

describe('a commit whose answer is lost', () => {
  const db = useTestDatabase();
  let direct: pg.Pool;
  let proxy: LossyPgProxy;
  let viaProxy: pg.Pool;
  let quota: QuotaManager | null = null;

  beforeAll(async () => {
    direct = suitePool(db, 2);
    await migrate(direct);
  });
  beforeEach(async () => {
    await quota?.close().catch(() => undefined);
    quota = null;
    await viaProxy?.end().catch(() => undefined);
    await proxy?.close();
    proxy = await startLossyPgProxy(db.url);
    viaProxy = new pg.Pool({ connectionString: proxy.url, max: 1 });
    viaProxy.on('error', () => undefined);
    await direct.query('TRUNCATE quota_balances, quota_settlements CASCADE');
  });
  afterAll(async () => {
    await quota?.close().catch(() => undefined);
    await viaProxy?.end().catch(() => undefined);
    await proxy?.close();
    await direct.end();
  });

  async function used(): Promise<{ used: number; reserved: number }> {
    const { rows } = await direct.query<{ used: number; reserved: number }>(
      `SELECT used::float8 AS used, reserved::float8 AS reserved FROM quota_balances
       WHERE subject_kind = 'tenant' AND subject_id = $1`,
      [TENANT],
    );
    return rows[0]!;
  }

  async function spend(q: QuotaManager, n: number, cost: number): Promise<void> {
    for (let i = 0; i < n; i++) {
      const d = await q.admit(TENANT, null, cost);
      if (!d.ok) throw new Error(`request ${i} refused: ${d.code}`);
      q.settle(d.ticket, cost);
    }
  }

  it('charges a quota settle once when it is retried after its commit answer was lost', async () => {
    const registry = new Registry();
    // No timer ticks during the test: every sync is the test's own.
    const q = createQuotaManager({ pool: viaProxy, registry, syncIntervalMs: 1_000_000_000 });
    quota = q;
    await q.applySnapshot(quotas(1000));
    await spend(q, 5, 1.5);

    const lost = proxy.loseNextAnswer('last_settle_charged');
    await expect(q.sync()).rejects.toThrow();
    await lost;
    expect(proxy.lost()).toBe(1);
    // The database did commit the 7.5 credits: the answer, not the statement, was lost.
    expect((await used()).used).toBe(7.5);

    // More spend before the retry: the lost step goes again unchanged, the new spend after it.
    await spend(q, 3, 2);
    await q.sync();
    expect((await used()).used).toBe(7.5);
    expect(await metric(registry, 'gpugate_quota_duplicate_settlements_total')).toBe(1);
    await q.sync();
    expect((await used()).used).toBe(13.5);

    await q.close();
    quota = null;
    expect(await used()).toEqual({ used: 13.5, reserved: 0 });
    // The returned lease left its tombstone: its last settled step.
    const { rows } = await direct.query<{ seq: number }>('SELECT seq::int AS seq FROM quota_settlements');
    expect(rows).toEqual([{ seq: 2 }]);
  });

  it('does not charge a retried settle again when its lease expired and was reclaimed meanwhile', async () => {
    const registry = new Registry();
    const q = createQuotaManager({ pool: viaProxy, registry, syncIntervalMs: 1_000_000_000 });
    quota = q;
    await q.applySnapshot(quotas(1000));
    await spend(q, 4, 2.5);
    const lost = proxy.loseNextAnswer('last_settle_charged');
    await expect(q.sync()).rejects.toThrow();
    await lost;
    expect((await used()).used).toBe(10);
    // An outage longer than the lease TTL: the lease expires and another replica's sweep reclaims it.
    await direct.query(`UPDATE quota_leases SET expires_at = now() - interval '1 second'`);
    expect(await reclaimExpiredLeases(direct)).toBe(1);
    await q.sync(); // the retry finds the lease gone, and its tombstone says the step was done
    expect(await used()).toEqual({ used: 10, reserved: 0 });
    expect(await metric(registry, 'gpugate_quota_duplicate_settlements_total')).toBe(1);
  });

  it('stores each usage event once when a flush is retried after its commit answer was lost', async () => {
    const registry = new Registry();
    const writer = createMeteringWriter({
      pool: viaProxy,
      registry,
      flushIntervalMs: 1_000_000_000,
      retryMinMs: 1,
      retryMaxMs: 10,
    });
    const time = Date.now();
    const events: UsageEvent[] = Array.from({ length: 300 }, (_, i) => ({
      requestId: `lost-commit-${time}-${i}`,
      time,
      tenant: TENANT,
      keyId: null,
      userId: null,
      backend: 'ns/llm',
      endpoint: 'e1',
      route: '/v1/chat/completions',
      model: 'm',
      status: 200,
      inputTokens: 3,
      outputTokens: 4,
      tokensEstimated: false,
      bytesIn: 10,
      bytesOut: 20,
      durationMs: 1,
      ttfbMs: 1,
      credits: 0.5,
    }));
    for (const e of events) writer.record(e);
    const lost = proxy.loseNextAnswer('gpugate_usage_batch');
    await expect(writer.flush()).rejects.toThrow();
    await lost;
    expect(writer.depth()).toBe(300);
    const outcome = await writer.flushAndClose(10_000);
    expect(outcome).toEqual({ written: 300, lost: 0 });
    expect(await metric(registry, 'gpugate_metering_duplicate_events_total')).toBe(300);

    const { rows } = await direct.query<{ events: number; requests: number; credits: number }>(
      `SELECT (SELECT count(*)::int FROM usage_events WHERE tenant = $1) AS events,
              (SELECT sum(requests)::int FROM usage_daily WHERE tenant = $1) AS requests,
              (SELECT sum(credits)::float8 FROM usage_daily WHERE tenant = $1) AS credits`,
      [TENANT],
    );
    expect(rows[0]).toEqual({ events: 300, requests: 300, credits: 150 });
  });
});
