// Metering write path benchmark: the same steady load written by the batching writer and one INSERT
// per event (the same statement with a batch of one, roll-up included), then each at full speed.
// Prints events per database round trip and ratios. Not a test: numbers go to docs/benchmarks.md.
//
//   tsx test/bench/metering.ts [--rates 1000,5000] [--seconds 5] [--burst 20000]
//
// Postgres: DATABASE_URL when set, else an embedded server with durable settings (fsync and
// synchronous_commit on, as in production: per-event commits pay their WAL flush here).
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { Registry } from 'prom-client';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createQuotaManager } from '../../dataplane/metering/quota.ts';
import type { UsageEvent } from '../../dataplane/metering/usage.ts';
import { createMeteringWriter, insertUsageBatch } from '../../dataplane/metering/writer.ts';
import { tenant } from '../dataplane/harness.ts';
import { startBenchPostgres } from './postgres.ts';

const { values: args } = parseArgs({
  options: {
    rates: { type: 'string', default: '1000,5000' },
    seconds: { type: 'string', default: '5' },
    burst: { type: 'string', default: '20000' },
  },
});
const rates = args.rates.split(',').map(Number);
const seconds = Number(args.seconds);
const burst = Number(args.burst);

let seq = 0;
function usageEvent(): UsageEvent {
  seq++;
  return {
    requestId: `bench-${process.pid}-${seq}`,
    time: Date.now(),
    tenant: `ns/tenant-${seq % 20}`,
    keyId: `ns/key-${seq % 200}`,
    userId: null,
    backend: `ns/backend-${seq % 4}`,
    endpoint: `e${seq % 8}`,
    route: '/v1/chat/completions',
    model: `model-${seq % 4}`,
    status: seq % 50 === 0 ? 502 : 200,
    inputTokens: 200 + (seq % 300),
    outputTokens: 100 + (seq % 500),
    tokensEstimated: false,
    bytesIn: 1200,
    bytesOut: 4800,
    durationMs: 850,
    ttfbMs: 120,
    credits: 0.0123,
  };
}

interface Run {
  events: number;
  roundTrips: number;
  wallMs: number;
  /** Time until the last event was stored after the load stopped. */
  drainMs: number;
}

async function countFlushes(registry: Registry): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find(
    (x) => x.name === 'gpugate_metering_flush_duration_seconds',
  );
  const count = m?.values.find((v) => (v as { metricName?: string }).metricName?.endsWith('_count'));
  return Number(count?.value ?? 0);
}

/** Offer `rate` events per second for `seconds`, in 10 ms ticks. */
async function steady(rate: number, record: (e: UsageEvent) => void): Promise<number> {
  const perTick = rate / 100;
  let offered = 0;
  const start = Date.now();
  while (Date.now() - start < seconds * 1000) {
    const due = Math.floor(((Date.now() - start) / 1000) * rate + perTick);
    while (offered < due) {
      record(usageEvent());
      offered++;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return offered;
}

async function batched(pool: pg.Pool, rate: number | null): Promise<Run> {
  const registry = new Registry();
  const writer = createMeteringWriter({ pool, registry, maxBuffer: 1_000_000 });
  const start = Date.now();
  let events: number;
  if (rate === null) {
    for (let i = 0; i < burst; i++) writer.record(usageEvent());
    events = burst;
  } else {
    events = await steady(rate, (e) => writer.record(e));
  }
  const loadEnd = Date.now();
  await writer.flushAndClose(120_000);
  const end = Date.now();
  return { events, roundTrips: await countFlushes(registry), wallMs: end - start, drainMs: end - loadEnd };
}

async function perEvent(pool: pg.Pool, rate: number | null): Promise<Run> {
  const pending = new Set<Promise<unknown>>();
  const record = (e: UsageEvent): void => {
    const p = insertUsageBatch(pool, [e]).finally(() => pending.delete(p));
    pending.add(p);
  };
  const start = Date.now();
  let events: number;
  if (rate === null) {
    for (let i = 0; i < burst; i++) record(usageEvent());
    events = burst;
  } else {
    events = await steady(rate, record);
  }
  const loadEnd = Date.now();
  while (pending.size > 0) await Promise.all([...pending]);
  const end = Date.now();
  return { events, roundTrips: events, wallMs: end - start, drainMs: end - loadEnd };
}

function line(label: string, run: Run): string {
  const perTrip = run.events / Math.max(run.roundTrips, 1);
  const eps = (run.events / run.wallMs) * 1000;
  return (
    `${label.padEnd(34)} ${String(run.events).padStart(7)} events  ${String(run.roundTrips).padStart(7)} round trips  ` +
    `${perTrip.toFixed(1).padStart(7)} events/trip  ${eps.toFixed(0).padStart(7)} events/s  drain ${run.drainMs} ms`
  );
}

/** What quota admission adds to a request when the replica's slice covers it (no database). */
async function admissionCost(pool: pg.Pool): Promise<void> {
  const registry = new Registry();
  const quota = createQuotaManager({ pool, syncIntervalMs: 200, idleReleaseMs: 60_000, registry });
  const bench = tenant('ns/bench', { quota: { credits: 1e12, period: 'Monthly' } });
  await quota.applySnapshot({ tenants: [bench], keys: [] });
  const n = 1_000_000;
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const d = await quota.admit('ns/bench', null, 1);
    if (d.ok) quota.settle(d.ticket, 1);
  }
  const ns = Number(process.hrtime.bigint() - start) / n;
  // What the request path uses: tryAdmit decides without a promise while the slice covers it.
  const syncStart = process.hrtime.bigint();
  let slow = 0;
  for (let i = 0; i < n; i++) {
    const d = quota.tryAdmit('ns/bench', null, 1) ?? (slow++, await quota.admit('ns/bench', null, 1));
    if (d.ok) quota.settle(d.ticket, 1);
  }
  const syncNs = Number(process.hrtime.bigint() - syncStart) / n;
  await quota.close();
  console.log(
    `  quota admission: ${ns.toFixed(0)} ns per admit+settle in memory (async admit), ` +
      `${syncNs.toFixed(0)} ns with tryAdmit (${slow} of ${n} needed the async path); ` +
      `${await leaseRequests(registry)} lease statements for ${2 * n} requests`,
  );
}

/**
 * What the writer costs the data-plane process per event: record() on the request path, then the
 * flushes (array literals, the pg protocol, the answer), as process CPU time (user + system) of this
 * process; Postgres's own work is not in it.
 */
async function writerCost(pool: pg.Pool): Promise<void> {
  const n = 100_000;
  const writer = createMeteringWriter({ pool, maxBuffer: n, flushIntervalMs: 1_000_000_000 });
  const events = Array.from({ length: n }, usageEvent);
  const cpu0 = process.cpuUsage();
  for (const e of events) writer.record(e);
  const cpu1 = process.cpuUsage(cpu0);
  const closed = await writer.flushAndClose(60_000);
  const cpu2 = process.cpuUsage(cpu0);
  const us = (c: NodeJS.CpuUsage) => c.user + c.system;
  console.log(
    `  writer CPU in the data-plane process: ${((us(cpu1) * 1000) / n).toFixed(0)} ns per record(), ` +
      `${((us(cpu2) - us(cpu1)) / n).toFixed(2)} us per event to flush (${closed.written} written in batches of 2,000)`,
  );
}

async function leaseRequests(registry: Registry): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === 'gpugate_quota_lease_requests_total');
  return (m?.values ?? []).reduce((sum, v) => sum + Number(v.value), 0);
}

async function main(): Promise<void> {
  const postgres = await startBenchPostgres();
  const url = postgres.url;
  // Same pool for both: 4 connections, like a data-plane process would give metering at most.
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  try {
    await migrate(pool);
    const version = (await pool.query<{ server_version: string }>('SHOW server_version')).rows[0]!
      .server_version;
    console.log(
      `metering write path: Postgres ${version}, ${cpus().length} cores, ${cpus()[0]?.model ?? ''}`,
    );
    console.log(`steady load ${seconds} s per run; full speed ${burst} events; pool of 4 connections\n`);
    for (const rate of rates) {
      await pool.query('TRUNCATE usage_events, usage_daily');
      const b = await batched(pool, rate);
      await pool.query('TRUNCATE usage_events, usage_daily');
      const s = await perEvent(pool, rate);
      console.log(line(`batched writer @ ${rate}/s`, b));
      console.log(line(`one INSERT per event @ ${rate}/s`, s));
      console.log(
        `  ratio: ${(b.events / b.roundTrips / (s.events / s.roundTrips)).toFixed(0)}x fewer round trips ` +
          `(${((b.roundTrips / b.events) * 1000).toFixed(1)} vs ${((s.roundTrips / s.events) * 1000).toFixed(0)} per 1,000 events)\n`,
      );
    }
    await pool.query('TRUNCATE usage_events, usage_daily');
    const bf = await batched(pool, null);
    await pool.query('TRUNCATE usage_events, usage_daily');
    const sf = await perEvent(pool, null);
    console.log(line('batched writer, full speed', bf));
    console.log(line('one INSERT per event, full speed', sf));
    const ratio = bf.events / bf.wallMs / (sf.events / sf.wallMs);
    console.log(`  ratio: batched writes ${ratio.toFixed(1)}x the events per second of one INSERT per event`);
    await admissionCost(pool);
    await pool.query('TRUNCATE usage_events, usage_daily');
    await writerCost(pool);
    const size = await pool.query<{ bytes: string; rows: string }>(
      `SELECT sum(pg_total_relation_size(c.oid))::text AS bytes, (SELECT count(*) FROM usage_events)::text AS rows
       FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'usage_events'::regclass`,
    );
    const r = size.rows[0]!;
    console.log(
      `  storage: ${(Number(r.bytes) / Number(r.rows)) | 0} bytes per usage event on disk (heap + indexes, ${r.rows} rows)`,
    );
  } finally {
    await pool.end();
    await postgres.stop();
  }
}

await main();
