// Metered vs unmetered data-plane throughput, in one run. Not a test: numbers go to docs/benchmarks.md.
//
//   node test/bench/metered.ts [--seconds 5] [--rounds 3] [--connections 32] [--warmup-seconds 3]
//                              [--rate R] [--baseline-root DIR]
//
// Two gpugate processes (test/bench/gateway-process.ts, gpugate-runner.ts: every request-path feature
// on) in front of the same fixed-answer upstream, loaded by the same closed-loop generator
// (test/bench/load.ts) one after the other, rounds alternating to spread drift; then both at once at
// one fixed rate (open loop, R req/s each, default a quarter of the unmetered median throughput) so
// that CPU per request is compared at equal load and under the same machine conditions (closed loop,
// the slower gateway also batches less I/O per event-loop turn, which raises its CPU per request by
// itself, and other work on the machine lands on one gateway's rounds more than the other's):
//   unmetered: no usage sink, no quota manager;
//   metered:   the batching writer (createMeteringWriter) into real Postgres and the quota manager on, with
//              a quota on the tenant high enough never to refuse, so every request is admitted against a
//              lease and settled, and every answer is one usage event.
// --baseline-root DIR: a third gateway, metered too, started from another source tree (an older version
// of gpugate checked out or exported there, with node_modules linked), joins the fixed-rate rounds, so
// a change to the metering path is measured against what it replaced in the same rounds.
// Postgres: DATABASE_URL when set, else an embedded server with durable settings (fsync and
// synchronous_commit on). Prints req/s per round, the gateway's CPU time per request, the two ratios
// (throughput metered ÷ unmetered, summed; CPU per request unmetered ÷ metered, medians), and, from the
// metered gateway's /metrics, events written per flush (one INSERT statement, one round trip), failed
// flushes, drops and quota lease statements. At the end the stored usage events are counted against the
// 200s the metered gateway served.
import { readdir, readFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { Pool } from 'undici';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { startGateway, type GatewayProcess } from './gateway-process.ts';
import { closedLoop, startFixedUpstream } from './load.ts';
import { startBenchPostgres } from './postgres.ts';

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '3' },
    connections: { type: 'string', default: '32' },
    'warmup-seconds': { type: 'string', default: '3' },
    rate: { type: 'string' },
    'baseline-root': { type: 'string' },
  },
});
const seconds = Number(args.seconds);
const rounds = Number(args.rounds);
const connections = Number(args.connections);
const body = JSON.stringify({
  model: 'bench-model',
  messages: [{ role: 'user', content: 'hello' }],
  max_tokens: 16,
});

/**
 * CPU time of the embedded Postgres so far, in microseconds: the postmaster's own and that of its
 * exited children (cutime/cstime: backends it reaped, as when a pool closes an idle connection) plus
 * every live child (backends, WAL writer, checkpointer). Null with DATABASE_URL (a server elsewhere).
 */
async function postgresCpuUs(dataDir: string | undefined): Promise<number | null> {
  if (!dataDir) return null;
  const master = Number((await readFile(join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0]);
  let ticks = 0;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(entry) === master)
        ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
      else if (Number(fields[1]) === master) ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // the process ended meanwhile
    }
  }
  return ticks * 10_000;
}

/** Sum of every sample of the named series on the gateway's /metrics. */
async function metric(gw: GatewayProcess, name: string): Promise<number> {
  const text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`))
      sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** POST at `rate` per second for `ms` whatever the answers take (open loop); waits for the last answers. */
async function fixedRate(
  pool: Pool,
  req: { path: string; headers: Record<string, string>; body: string },
  rate: number,
  ms: number,
): Promise<{ ok: number; failed: number }> {
  const start = performance.now();
  let sent = 0;
  let ok = 0;
  let failed = 0;
  const inflight = new Set<Promise<void>>();
  while (performance.now() - start < ms) {
    const due = Math.floor(((performance.now() - start) / 1000) * rate);
    for (; sent < due; sent++) {
      const p: Promise<void> = pool
        .request({ path: req.path, method: 'POST', headers: req.headers, body: req.body })
        .then(
          async (res) => {
            await res.body.dump();
            if (res.statusCode === 200) ok++;
            else failed++;
          },
          () => {
            failed++;
          },
        )
        .finally(() => inflight.delete(p));
      inflight.add(p);
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all(inflight);
  return { ok, failed };
}

interface Round {
  rate: number;
  cpuUsPerReq: number;
  /** Postgres CPU per request during the round (null: not measurable). */
  pgUsPerReq: number | null;
  ok: number;
}

async function main(): Promise<void> {
  const postgres = await startBenchPostgres();
  const url = postgres.url;
  const db = new pg.Pool({ connectionString: url, max: 1 });
  db.on('error', () => undefined); // the idle connection dies when the embedded server stops
  const upstream = await startFixedUpstream();
  const gateways: GatewayProcess[] = [];
  try {
    await migrate(db);
    await db.query('TRUNCATE usage_events, usage_daily');
    const version = (await db.query<{ server_version: string }>('SHOW server_version')).rows[0]!
      .server_version;
    console.log(
      `metered vs unmetered: Postgres ${version}, ${cpus().length} cores, ${cpus()[0]?.model ?? ''}; ` +
        `${rounds} rounds of ${seconds} s, ${connections} connections`,
    );
    const off = await startGateway(upstream.url, { metering: 'none' });
    gateways.push(off);
    const on = await startGateway(upstream.url, { metering: url });
    gateways.push(on);
    const baselineRoot = args['baseline-root'];
    const base = baselineRoot
      ? await startGateway(upstream.url, { metering: url, root: baselineRoot })
      : null;
    if (base) gateways.push(base);

    let meteredOk = 0;
    const served = new Map<GatewayProcess, number>();
    async function load(gw: GatewayProcess, ms: number, rate?: number): Promise<Round> {
      const pool = new Pool(gw.url, { connections, pipelining: 1 });
      const headers = { 'content-type': 'application/json', authorization: `Bearer ${gw.key}` };
      const req = { path: '/v1/chat/completions', headers, body };
      const cpu0 = gw.cpuUs();
      const pg0 = await postgresCpuUs(postgres.dataDir);
      const { ok, failed } =
        rate === undefined
          ? await closedLoop(pool, req, connections, ms)
          : await fixedRate(pool, req, rate, ms);
      const cpu = gw.cpuUs() - cpu0;
      const pg1 = await postgresCpuUs(postgres.dataDir);
      await pool.close();
      if (failed > 0) throw new Error(`${failed} requests failed`);
      if (gw === on || gw === base) meteredOk += ok;
      served.set(gw, (served.get(gw) ?? 0) + ok);
      const pgUsPerReq = pg0 === null || pg1 === null ? null : (pg1 - pg0) / ok;
      return { rate: ok / (ms / 1000), cpuUsPerReq: cpu / ok, pgUsPerReq, ok };
    }

    // Warm-up (JIT, connections, the first quota lease and partition DDL), not counted.
    const warmupMs = Number(args['warmup-seconds']) * 1000;
    await load(off, warmupMs);
    await load(on, warmupMs);
    const offRuns: Round[] = [];
    const onRuns: Round[] = [];
    const trips: string[] = [];
    for (let i = 0; i < rounds; i++) {
      offRuns.push(await load(off, seconds * 1000));
      const written0 = await metric(on, 'gpugate_metering_written_events_total');
      const flushes0 = await metric(on, 'gpugate_metering_flush_duration_seconds_count');
      const r = await load(on, seconds * 1000);
      onRuns.push(r);
      // Events this round's flushes wrote; the buffer at the end goes to the next round's count.
      const written = (await metric(on, 'gpugate_metering_written_events_total')) - written0;
      const flushes = (await metric(on, 'gpugate_metering_flush_duration_seconds_count')) - flushes0;
      trips.push(`${(written / flushes).toFixed(0)} (${written} events, ${flushes} flushes)`);
    }
    const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
    const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;
    const show = (runs: Round[]) =>
      `${runs.map((r) => r.rate.toFixed(0)).join(', ')} req/s; gateway CPU ${runs.map((r) => r.cpuUsPerReq.toFixed(0)).join(', ')} µs/req`;
    console.log(`unmetered (no sink, no quota):        ${show(offRuns)}`);
    console.log(`metered (writer + quota on Postgres): ${show(onRuns)}`);
    if (onRuns.every((r) => r.pgUsPerReq !== null))
      console.log(
        `Postgres CPU (same cores) per metered request: ${onRuns.map((r) => (r.pgUsPerReq as number).toFixed(1)).join(', ')} µs; ` +
          `during unmetered rounds: ${offRuns.map((r) => (r.pgUsPerReq as number).toFixed(1)).join(', ')} µs`,
      );
    console.log(
      `throughput ratio metered/unmetered (sums): ${(sum(onRuns.map((r) => r.rate)) / sum(offRuns.map((r) => r.rate))).toFixed(3)}`,
    );
    console.log(
      `capacity ratio (median gateway CPU per request, unmetered ÷ metered): ${(median(offRuns.map((r) => r.cpuUsPerReq)) / median(onRuns.map((r) => r.cpuUsPerReq))).toFixed(3)}`,
    );
    console.log(`events per flush (one INSERT, one round trip) per metered round: ${trips.join('; ')}`);

    // The same request rate for both, at the same time: CPU per request at equal load, and whatever
    // else runs on the machine during a round weighs on both alike.
    const rate = Number(args.rate ?? Math.round(median(offRuns.map((r) => r.rate)) / 4));
    const offFixed: Round[] = [];
    const onFixed: Round[] = [];
    const baseFixed: Round[] = [];
    for (let i = 0; i < rounds; i++) {
      const [a, b, c] = await Promise.all([
        load(off, seconds * 1000, rate),
        load(on, seconds * 1000, rate),
        base ? load(base, seconds * 1000, rate) : null,
      ]);
      offFixed.push(a);
      onFixed.push(b);
      if (c) baseFixed.push(c);
    }
    console.log(`both at a fixed ${rate} req/s at the same time (open loop):`);
    console.log(`  unmetered: ${show(offFixed)}`);
    console.log(`  metered:   ${show(onFixed)}`);
    console.log(
      `  CPU per request at equal load, unmetered ÷ metered (medians): ${(median(offFixed.map((r) => r.cpuUsPerReq)) / median(onFixed.map((r) => r.cpuUsPerReq))).toFixed(3)}; ` +
        `metering adds ${(median(onFixed.map((r) => r.cpuUsPerReq)) - median(offFixed.map((r) => r.cpuUsPerReq))).toFixed(1)} µs per request ` +
        `(least over the rounds, which other work on the machine only raises: ${Math.min(...offFixed.map((r) => r.cpuUsPerReq)).toFixed(0)} → ${Math.min(...onFixed.map((r) => r.cpuUsPerReq)).toFixed(0)} µs)` +
        (onFixed.every((r) => r.pgUsPerReq !== null)
          ? // Postgres serves every metered gateway of the round: its CPU over all their requests.
            `; Postgres ${onFixed.map((r, i) => (((r.pgUsPerReq as number) * r.ok) / (r.ok + (baseFixed[i]?.ok ?? 0))).toFixed(1)).join(', ')} µs per metered request`
          : ''),
    );
    if (base) {
      console.log(`  metered, ${baselineRoot}: ${show(baseFixed)}`);
      console.log(
        `  CPU per request, baseline tree ÷ this tree (medians): ${(median(baseFixed.map((r) => r.cpuUsPerReq)) / median(onFixed.map((r) => r.cpuUsPerReq))).toFixed(3)}; ` +
          `metering adds ${(median(baseFixed.map((r) => r.cpuUsPerReq)) - median(offFixed.map((r) => r.cpuUsPerReq))).toFixed(1)} µs per request there`,
      );
    }
    console.log(
      `flush failures ${await metric(on, 'gpugate_metering_flush_failures_total')}, dropped events ` +
        `${await metric(on, 'gpugate_metering_dropped_events_total')}, quota lease statements ` +
        `${await metric(on, 'gpugate_quota_lease_requests_total')}, quota refusals ${await metric(on, 'gpugate_quota_refusals_total')}`,
    );
    // For per-request figures from CPU profiles of the two processes (NODE_OPTIONS=--cpu-prof).
    console.log(
      `requests served including warm-up: unmetered (pid ${off.pid}) ${served.get(off)}, metered (pid ${on.pid}) ${served.get(on)}`,
    );
    for (const gw of [on, base]) {
      if (!gw) continue;
      await gw.stop(); // flushes what is buffered
      gateways.splice(gateways.indexOf(gw), 1);
    }
    const stored = (await db.query<{ n: string }>('SELECT count(*)::text AS n FROM usage_events')).rows[0]!.n;
    console.log(`usage events stored ${stored} for ${meteredOk} metered 200s`);
  } finally {
    for (const gw of gateways) await gw.stop();
    upstream.close();
    await db.end();
    await postgres.stop();
  }
}

await main();
