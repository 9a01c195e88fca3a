// The metering writer against real Postgres: idempotent retries, roll-ups, bounded buffer, outages.
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../../dataplane/metering/migrate.ts';
import type { UsageEvent } from '../../dataplane/metering/usage.ts';
import { createMeteringWriter } from '../../dataplane/metering/writer.ts';
import { freePort, startEmbeddedPostgres } from '../../operator/standalone/postgres.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { until } from './harness.ts';

let seq = 0;
function usageEvent(overrides: Partial<UsageEvent> = {}): UsageEvent {
  seq++;
  return {
    requestId: `req-${process.pid}-${seq}`,
    time: Date.now(),
    tenant: 'team-a/tenant',
    keyId: 'team-a/key-1',
    userId: null,
    backend: 'gpu/llama',
    endpoint: 'e1',
    route: '/v1/chat/completions',
    model: 'llama-3-8b',
    status: 200,
    inputTokens: 10,
    outputTokens: 20,
    tokensEstimated: false,
    bytesIn: 100,
    bytesOut: 200,
    durationMs: 12.5,
    ttfbMs: 3,
    credits: 1.5,
    ...overrides,
  };
}

/** A pool whose next `n` batch statements run and commit, then report a lost connection. */
function losingAnswersPool(real: pg.Pool, failures: { afterCommit: number; beforeSend: number }): pg.Pool {
  return new Proxy(real, {
    get(target, prop, receiver) {
      if (prop !== 'query') {
        const value = Reflect.get(target, prop, receiver) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      }
      return async (config: pg.QueryConfig) => {
        const isBatch = typeof config === 'object' && config.name === 'gpugate_usage_batch';
        if (isBatch && failures.beforeSend > 0) {
          failures.beforeSend--;
          throw new Error('connect ECONNREFUSED (injected)');
        }
        const result = await target.query(config);
        if (isBatch && failures.afterCommit > 0) {
          failures.afterCommit--;
          throw new Error('Connection terminated unexpectedly (injected, after commit)');
        }
        return result;
      };
    },
  });
}

async function metric(registry: Registry, name: string): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  return (m?.values ?? []).reduce((sum, v) => sum + Number(v.value), 0);
}

describe('metering writer', () => {
  const db = useTestDatabase();
  let pool: pg.Pool;
  beforeAll(async () => {
    pool = suitePool(db, 4);
    await migrate(pool);
  });
  afterAll(() => pool.end());

  it('stores exactly one event per request id when flushes fail before and after their commit', async () => {
    await pool.query('TRUNCATE usage_events, usage_daily');
    const registry = new Registry();
    const failures = { afterCommit: 2, beforeSend: 2 };
    const writer = createMeteringWriter({
      pool: losingAnswersPool(pool, failures),
      maxBatch: 50,
      flushIntervalMs: 10,
      retryMinMs: 5,
      retryMaxMs: 20,
      registry,
    });
    const events = Array.from({ length: 500 }, () => usageEvent());
    for (const e of events) writer.record(e);
    writer.record(events[7]!); // the request path reporting a request twice is also one row
    const closed = await writer.flushAndClose(10_000);
    expect(closed.lost).toBe(0);
    expect(failures).toEqual({ afterCommit: 0, beforeSend: 0 });
    const { rows } = await pool.query<{ n: number; distinct: number }>(
      'SELECT count(*)::int AS n, count(DISTINCT request_id)::int AS distinct FROM usage_events',
    );
    expect(rows[0]).toEqual({ n: 500, distinct: 500 });
    const daily = await pool.query<{ requests: string; credits: string; input: string }>(
      'SELECT sum(requests) AS requests, sum(credits) AS credits, sum(input_tokens) AS input FROM usage_daily',
    );
    expect(Number(daily.rows[0]!.requests)).toBe(500);
    expect(Number(daily.rows[0]!.credits)).toBe(750);
    expect(Number(daily.rows[0]!.input)).toBe(5000);
    expect(await metric(registry, 'gpugate_metering_flush_failures_total')).toBe(4);
    // A batch whose commit answer was lost is counted as duplicates on its retry: the writer never
    // learnt that it had inserted them. Stored rows are the truth; the counters add up to what was sent.
    const writtenCount = await metric(registry, 'gpugate_metering_written_events_total');
    const duplicates = await metric(registry, 'gpugate_metering_duplicate_events_total');
    expect(writtenCount + duplicates).toBe(501);
    expect(duplicates).toBeGreaterThanOrEqual(1);
  });

  it('stores text, times and numbers exactly as recorded, whatever characters the text holds', async () => {
    await pool.query('TRUNCATE usage_events, usage_daily');
    const writer = createMeteringWriter({ pool, flushIntervalMs: 10 });
    // The model comes from the client's JSON body: anything can be in it.
    const awkward = [
      'a"b',
      'back\\slash',
      '{braces},commas',
      'NULL',
      '',
      ' spaced ',
      'ünï😀',
      'nul\u0000byte',
    ];
    const time = Date.parse('2030-06-01T12:34:56.789Z');
    const events = awkward.map((model, i) =>
      usageEvent({
        model,
        time: time + i,
        credits: 0.1 + 0.2,
        durationMs: 1.6,
        ttfbMs: i === 0 ? null : 2.4,
      }),
    );
    for (const e of events) writer.record(e);
    await writer.flushAndClose();
    const { rows } = await pool.query<{
      model: string;
      ms: string;
      credits: string;
      duration_ms: number;
      ttfb_ms: number | null;
    }>(
      `SELECT model, (extract(epoch FROM time) * 1000)::bigint::text AS ms, credits::text, duration_ms, ttfb_ms
       FROM usage_events ORDER BY time`,
    );
    expect(rows.map((r) => r.model)).toEqual(awkward.map((m) => m.replaceAll('\u0000', '')));
    expect(rows.map((r) => Number(r.ms))).toEqual(events.map((e) => e.time));
    expect(rows[0]).toMatchObject({ credits: '0.30000000000000004', duration_ms: 2, ttfb_ms: null });
    expect(rows[1]).toMatchObject({ ttfb_ms: 2 });
  });

  it('rolls events up per tenant, day, key, backend and model, counting errors', async () => {
    await pool.query('TRUNCATE usage_events, usage_daily');
    const writer = createMeteringWriter({ pool, flushIntervalMs: 10 });
    const day1 = Date.parse('2030-06-01T23:59:59Z');
    const day2 = Date.parse('2030-06-02T00:00:01Z');
    writer.record(usageEvent({ time: day1, status: 200 }));
    writer.record(usageEvent({ time: day1, status: 502, credits: 0 }));
    writer.record(usageEvent({ time: day2, keyId: null, model: null, outputTokens: 7 }));
    await writer.flushAndClose();
    const { rows } = await pool.query(
      `SELECT day::text, key_id, model, requests::int, output_tokens::int, credits::float8 AS credits, errors::int
       FROM usage_daily ORDER BY day`,
    );
    expect(rows).toEqual([
      {
        day: '2030-06-01',
        key_id: 'team-a/key-1',
        model: 'llama-3-8b',
        requests: 2,
        output_tokens: 40,
        credits: 1.5,
        errors: 1,
      },
      { day: '2030-06-02', key_id: '', model: '', requests: 1, output_tokens: 7, credits: 1.5, errors: 0 },
    ]);
  });

  it('buffers up to its bound while Postgres is unreachable, then drops and counts, and refuses fail-closed admission first', async () => {
    const registry = new Registry();
    const unreachable = new pg.Pool({
      connectionString: `postgres://x:y@127.0.0.1:${await freePort()}/none`,
    });
    const writer = createMeteringWriter({
      pool: unreachable,
      maxBatch: 10,
      maxBuffer: 100,
      flushIntervalMs: 5,
      retryMinMs: 5,
      retryMaxMs: 10,
      registry,
    });
    for (let i = 0; i < 89; i++) writer.record(usageEvent());
    expect(writer.canAdmit(false)).toBe(true);
    writer.record(usageEvent());
    expect(writer.canAdmit(false)).toBe(false); // one batch of headroom left for requests in flight
    expect(writer.canAdmit(true)).toBe(true);
    for (let i = 0; i < 15; i++) writer.record(usageEvent());
    expect(writer.depth()).toBe(100);
    // The first flush attempt fails (connection refused): waited for (bounded), not assumed within 50 ms.
    await until(() => !writer.isHealthy(), 30_000, 'a failed flush');
    expect(writer.isHealthy()).toBe(false);
    expect(await metric(registry, 'gpugate_metering_dropped_events_total')).toBe(5);
    expect(await metric(registry, 'gpugate_metering_buffer_events')).toBe(100);
    const closed = await writer.flushAndClose(50);
    expect(closed).toEqual({ written: 0, lost: 100 });
    await unreachable.end();
  });
});

describe('metering writer across a Postgres restart', () => {
  it('loses nothing when Postgres stops mid-run and comes back', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gpugate-outage-'));
    await chmod(dir, 0o755);
    let server = await startEmbeddedPostgres({ dataDir: join(dir, 'data'), throwaway: true });
    try {
      await migrate(server.url);
      const pool = new pg.Pool({ connectionString: server.url, max: 2, connectionTimeoutMillis: 1000 });
      pool.on('error', () => undefined);
      const registry = new Registry();
      const writer = createMeteringWriter({
        pool,
        maxBatch: 100,
        flushIntervalMs: 20,
        retryMinMs: 20,
        retryMaxMs: 200,
        registry,
      });
      const ids: string[] = [];
      const produce = async (n: number): Promise<void> => {
        for (let i = 0; i < n; i++) {
          const e = usageEvent();
          ids.push(e.requestId);
          writer.record(e);
          if (i % 50 === 0) await new Promise((r) => setTimeout(r, 2));
        }
      };
      await produce(1000);
      await server.stop();
      await produce(2000); // Postgres is down: buffered
      // A flush fails once its attempt runs; waited for (bounded), not assumed within a fixed delay.
      await until(() => !writer.isHealthy(), 30_000, 'a failed flush');
      expect(writer.isHealthy()).toBe(false);
      const buffered = writer.depth();
      server = await startEmbeddedPostgres({ dataDir: join(dir, 'data'), port: server.port });
      await produce(1000);
      const closed = await writer.flushAndClose(30_000);
      expect(closed.lost).toBe(0);
      expect(await metric(registry, 'gpugate_metering_dropped_events_total')).toBe(0);
      const { rows } = await pool.query<{ n: number }>(
        'SELECT count(DISTINCT request_id)::int AS n FROM usage_events',
      );
      expect(rows[0]!.n).toBe(ids.length);
      const daily = await pool.query<{ n: string }>('SELECT sum(requests) AS n FROM usage_daily');
      expect(Number(daily.rows[0]!.n)).toBe(ids.length);
      console.log(`outage: ${ids.length} events, ${buffered} buffered while Postgres was down, 0 lost`);
      await pool.end();
    } finally {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
