// Three data-plane replicas' worth of metering (each its own pool, writer and quota manager) sharing
// one tenant quota: 10,000 requests, costs that differ from their estimates both ways. Whole
// data-plane processes (SIGTERM, SIGKILL) are covered once the request path is integrated.
import type pg from 'pg';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Snapshot } from '../../dataplane/config/snapshot.ts';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createQuotaManager, type QuotaManager } from '../../dataplane/metering/quota.ts';
import type { UsageEvent } from '../../dataplane/metering/usage.ts';
import { createMeteringWriter, type MeteringWriter } from '../../dataplane/metering/writer.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { sampleReserved } from '../fixtures/quota-sampler.ts';
import { tenant } from './harness.ts';

const TENANT = 'ns/acme';
const LIMIT = 4000;
const REQUESTS = 10_000;
const CONCURRENCY = 24;

const snapshot: Pick<Snapshot, 'tenants' | 'keys'> = {
  tenants: [tenant(TENANT, { quota: { credits: LIMIT, period: 'Monthly' }, failOpen: false })],
  keys: [],
};

/** Deterministic pseudo-random numbers, so a failure can be replayed. */
function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Replica {
  registry: Registry;
  pool: pg.Pool;
  writer: MeteringWriter;
  quota: QuotaManager;
}

async function sum(replicas: Replica[], name: string, suffix?: 'count'): Promise<number> {
  let total = 0;
  for (const r of replicas) {
    const metric = (await r.registry.getMetricsAsJSON()).find((m) => m.name === name);
    for (const v of metric?.values ?? []) {
      if (!suffix || (v as { metricName?: string }).metricName === `${name}_${suffix}`)
        total += Number(v.value);
    }
  }
  return total;
}

describe('three replicas sharing one tenant quota', () => {
  const db = useTestDatabase();
  let admin: pg.Pool;
  let replicas: Replica[];

  beforeAll(async () => {
    admin = suitePool(db, 2);
    await migrate(admin);
    replicas = [0, 1, 2].map(() => {
      const pool = suitePool(db, 3);
      const registry = new Registry();
      return {
        registry,
        pool,
        writer: createMeteringWriter({ pool, flushIntervalMs: 200, registry }),
        quota: createQuotaManager({ pool, syncIntervalMs: 200, registry }),
      };
    });
    await Promise.all(replicas.map((r) => r.quota.applySnapshot(snapshot)));
  });
  afterAll(async () => {
    await Promise.all(replicas.map((r) => r.pool.end()));
    await admin.end();
  });

  it('ends 10,000 requests with overspend within the outstanding lease slices and every event stored once', async () => {
    const random = mulberry32(42);
    let next = 0;
    let admittedCount = 0;
    let refusedCount = 0;
    // The slices outstanding when the quota ran out (test/fixtures/quota-sampler.ts).
    const sampler = sampleReserved(admin, TENANT);

    async function serve(replica: Replica, index: number): Promise<void> {
      const requestId = `r-${index}`;
      const time = Date.now();
      const decision = await replica.quota.admit(TENANT, null, 1);
      let credits = 0;
      let status = 429;
      if (decision.ok) {
        admittedCount++;
        await new Promise((r) => setTimeout(r, 5 + random() * 30)); // the request is in flight
        // Estimated at 1, costs 0.8..1.6: overruns are the only source of overspend.
        credits = Math.round((0.8 + random() * 0.8) * 1000) / 1000;
        status = 200;
        replica.quota.settle(decision.ticket, credits);
      } else {
        refusedCount++;
        sampler.refused();
      }
      const event: UsageEvent = {
        requestId,
        time,
        tenant: TENANT,
        keyId: `${TENANT}-key-${index % 3}`,
        userId: null,
        backend: 'ns/llama',
        endpoint: 'e0',
        route: '/v1/chat/completions',
        model: 'llama',
        status,
        inputTokens: 10,
        outputTokens: status === 200 ? 20 : 0,
        tokensEstimated: false,
        bytesIn: 300,
        bytesOut: 900,
        durationMs: 1,
        ttfbMs: 1,
        credits,
      };
      replica.writer.record(event);
    }

    async function worker(replica: Replica): Promise<void> {
      for (let i = next++; i < REQUESTS; i = next++) await serve(replica, i);
    }
    const started = Date.now();
    await Promise.all(replicas.flatMap((r) => Array.from({ length: CONCURRENCY }, () => worker(r))));
    const elapsedMs = Date.now() - started;
    const { reservedWhenExhausted, samples } = await sampler.stop();
    const closed = await Promise.all(replicas.map((r) => r.writer.flushAndClose()));
    await Promise.all(replicas.map((r) => r.quota.close()));

    const events = await admin.query<{ n: number; ids: number; credits: number }>(
      'SELECT count(*)::int AS n, count(DISTINCT request_id)::int AS ids, sum(credits)::float8 AS credits FROM usage_events',
    );
    const daily = await admin.query<{ requests: number; credits: number }>(
      'SELECT sum(requests)::int AS requests, sum(credits)::float8 AS credits FROM usage_daily',
    );
    const balance = await admin.query<{ used: number; reserved: number }>(
      'SELECT used::float8 AS used, reserved::float8 AS reserved FROM quota_balances WHERE subject_id = $1',
      [TENANT],
    );
    const { used, reserved } = balance.rows[0]!;
    const overspend = Math.max(0, used - LIMIT);
    console.log(
      `replicas: ${REQUESTS} requests in ${elapsedMs} ms, ${admittedCount} admitted, ${refusedCount} refused; ` +
        `used ${used.toFixed(3)} of ${LIMIT}, overspend ${overspend.toFixed(3)}, ` +
        `outstanding lease slices when the quota ran out ${reservedWhenExhausted} ` +
        `(largest of ${samples} samples in the 500 ms, or the last 5, before the first refusal); ` +
        `events stored ${events.rows[0]!.n}, lost ${closed.reduce((a, c) => a + c.lost, 0)}; ` +
        `lease requests ${await sum(replicas, 'gpugate_quota_lease_requests_total')}, ` +
        `event flushes ${await sum(replicas, 'gpugate_metering_flush_duration_seconds', 'count')}`,
    );

    expect(closed.every((c) => c.lost === 0)).toBe(true);
    expect(events.rows[0]).toMatchObject({ n: REQUESTS, ids: REQUESTS });
    expect(daily.rows[0]!.requests).toBe(REQUESTS);
    // Billing and quota agree: every settled credit is in the events, and the other way round.
    expect(events.rows[0]!.credits).toBeCloseTo(used, 6);
    expect(daily.rows[0]!.credits).toBeCloseTo(used, 6);
    expect(reserved).toBe(0);
    expect(refusedCount).toBeGreaterThan(0);
    expect(reservedWhenExhausted).not.toBeNull();
    expect(overspend).toBeLessThanOrEqual(reservedWhenExhausted!);
  });
});
