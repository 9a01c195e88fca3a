// Identity + admission benchmark. Not a test: numbers go to docs/benchmarks.md.
//
//   node --expose-gc test/bench/admission.ts [--seconds 4] [--rounds 3] [--connections 32] [--keys 100000]
//
// 1. Throughput with identity and admission on vs off, in one run against one data plane (its own
//    process, so it has a core to itself): "off" is a public route (no credential, no limits);
//    "on" is the same backend behind an API key whose key and tenant both have requests/min,
//    tokens/min and concurrency limits (set high enough never to refuse), so every bucket runs.
//    Rounds alternate off/on to spread drift. Two ratios: summed throughput on ÷ off, and the
//    data plane's CPU time per request off ÷ on (medians) -- the capacity ratio of a CPU-bound
//    gateway, which stays meaningful when other work shares the cores and throughput swings.
// 2. With --keys keys loaded: heap growth of applying that snapshot (after GC, input dropped), and
//    the cost of one authentication (checksum, SHA-256, lookup) with 10 keys vs that many keys.
import { fork, type ChildProcess } from 'node:child_process';
import { parseArgs } from 'node:util';
import type { IncomingMessage } from 'node:http';
import { pino } from 'pino';
import { Pool } from 'undici';
import { Admission } from '../../dataplane/admission/admission.ts';
import type { ApiKey, Snapshot } from '../../dataplane/config/snapshot.ts';
import type { ApplyResult } from '../../dataplane/admin/admin.ts';
import { createDataPlane, type DataPlane } from '../../dataplane/server.ts';
import { apiKey, backend, snapshot, tenant } from '../dataplane/harness.ts';
import { closedLoop, startFixedUpstream } from './load.ts';

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '4' },
    rounds: { type: 'string', default: '3' },
    connections: { type: 'string', default: '32' },
    keys: { type: 'string', default: '100000' },
    /** all: requests/min, tokens/min and concurrency on key and tenant; requests: requests/min only; none: identity only. */
    limits: { type: 'string', default: 'all' },
    serve: { type: 'string' },
  },
});
const quiet = pino({ level: 'silent' });
const HIGH =
  args.limits === 'none'
    ? {}
    : args.limits === 'requests'
      ? { requestsPerMinute: 100_000_000 }
      : { requestsPerMinute: 100_000_000, tokensPerMinute: 1_000_000_000, concurrentRequests: 100_000 };

function benchSnapshot(upstream: string, extraKeys: ApiKey[], key: ApiKey): Snapshot {
  return snapshot({
    backends: [
      backend('ns/llm', [upstream], {
        routes: [
          { pathPrefix: '/v1', methods: [], public: false },
          { pathPrefix: '/open', methods: [], public: true },
        ],
      }),
    ],
    tenants: [tenant('bench', { limits: HIGH })],
    keys: [key, ...extraKeys],
    settings: { clientLimits: { publicRequestsPerMinute: 0, authFailuresPerMinute: 0 } },
  });
}

// Child: the data plane alone in its process.
if (args.serve !== undefined) {
  const { upstream, key } = JSON.parse(args.serve) as { upstream: string; key: ApiKey };
  const plane = await createDataPlane({
    logger: quiet,
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0, token: null },
  });
  const r = plane.applySnapshot(benchSnapshot(upstream, [], key));
  if (!r.accepted) throw new Error('bench snapshot refused');
  process.send?.({ url: plane.url });
  process.on('message', (m) => {
    if (m === 'cpu') {
      const u = process.cpuUsage();
      process.send?.({ cpu: u.user + u.system });
    } else void plane.close({ drainMs: 100 }).then(() => process.exit(0));
  });
} else {
  await main();
}

async function main(): Promise<void> {
  const seconds = Number(args.seconds);
  const rounds = Number(args.rounds);
  const connections = Number(args.connections);
  const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hello' }], max_tokens: 16 });
  const upstream = await startFixedUpstream();
  const upstreamUrl = upstream.url;
  const k = apiKey('bench', { limits: HIGH });

  const child: ChildProcess = fork(
    new URL(import.meta.url).pathname,
    ['--serve', JSON.stringify({ upstream: upstreamUrl, key: k.key }), '--limits', args.limits],
    {
      stdio: 'inherit',
    },
  );
  const url = await new Promise<string>((resolve, reject) => {
    child.once('message', (m) => resolve((m as { url: string }).url));
    child.once('exit', (code) => reject(new Error(`data plane exited ${code}`)));
  });
  const pool = new Pool(url, { connections, pipelining: 1 });

  /** The data plane process's CPU time so far, in microseconds. */
  function planeCpu(): Promise<number> {
    return new Promise((resolve) => {
      child.once('message', (m) => resolve((m as { cpu: number }).cpu));
      child.send('cpu');
    });
  }

  async function load(
    path: string,
    headers: Record<string, string>,
    ms: number,
  ): Promise<{ rate: number; cpuUs: number }> {
    const cpu0 = await planeCpu();
    const { ok: done, failed } = await closedLoop(pool, { path, headers, body }, connections, ms);
    if (failed > 0) throw new Error(`${failed} requests failed on ${path}`);
    return { rate: done / (ms / 1000), cpuUs: ((await planeCpu()) - cpu0) / done };
  }

  const off = { path: '/open/chat/completions', headers: { 'content-type': 'application/json' } };
  const on = {
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${k.secret}` },
  };
  await load(off.path, off.headers, 1000); // warm-up both paths
  await load(on.path, on.headers, 1000);
  const offRuns: { rate: number; cpuUs: number }[] = [];
  const onRuns: { rate: number; cpuUs: number }[] = [];
  for (let i = 0; i < rounds; i++) {
    offRuns.push(await load(off.path, off.headers, seconds * 1000));
    onRuns.push(await load(on.path, on.headers, seconds * 1000));
  }
  const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
  const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;
  const show = (runs: { rate: number; cpuUs: number }[]) =>
    `${runs.map((r) => r.rate.toFixed(0)).join(', ')} req/s; data-plane CPU ${runs.map((r) => r.cpuUs.toFixed(0)).join(', ')} µs/req`;
  console.log(`off (public route): ${show(offRuns)}`);
  console.log(`on (key + limits):  ${show(onRuns)}`);
  console.log(
    `throughput ratio on/off (sums): ${(sum(onRuns.map((r) => r.rate)) / sum(offRuns.map((r) => r.rate))).toFixed(3)}`,
  );
  const cpuRatio = median(offRuns.map((r) => r.cpuUs)) / median(onRuns.map((r) => r.cpuUs));
  console.log(`capacity ratio on/off (median data-plane CPU per request, off ÷ on): ${cpuRatio.toFixed(3)}`);
  // The least disturbed round of each: on a shared machine contention only ever adds CPU per request.
  const best = (a: number[]) => Math.min(...a);
  const bestOff = best(offRuns.map((r) => r.cpuUs));
  const bestOn = best(onRuns.map((r) => r.cpuUs));
  console.log(
    `capacity ratio on/off (best round of each, ${bestOff.toFixed(0)} ÷ ${bestOn.toFixed(0)} µs): ${(bestOff / bestOn).toFixed(3)}`,
  );
  await pool.close();
  child.send('stop');
  await new Promise((r) => child.once('exit', r));
  upstream.close();

  await keysAtScale(Number(args.keys));
}

function gcHeap(): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('run with node --expose-gc');
  for (let i = 0; i < 3; i++) gc();
  return process.memoryUsage().heapUsed;
}

/** The pushed form of an n-key snapshot: JSON text, as PUT /config receives it; garbage after use. */
function pushedText(n: number, key: ApiKey): string {
  const extra: ApiKey[] = [];
  for (let i = 0; i < n; i++) extra.push(apiKey('bench', { limits: { requestsPerMinute: 60 } }).key);
  return JSON.stringify(benchSnapshot('http://127.0.0.1:9', extra, key));
}

/**
 * Parses and applies in a plain function: an async function keeps its temporaries (here the JSON
 * text) in its suspended frame, which would count the text as retained by the data plane.
 */
function applyPushed(plane: DataPlane, n: number, key: ApiKey): { r: ApplyResult; applyMs: number } {
  const input: unknown = JSON.parse(pushedText(n, key));
  const t0 = performance.now();
  const r = plane.applySnapshot(input);
  return { r, applyMs: performance.now() - t0 };
}

async function keysAtScale(n: number): Promise<void> {
  const plane = await createDataPlane({
    logger: quiet,
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0, token: null },
  });
  const k = apiKey('bench', { limits: HIGH });
  plane.applySnapshot(benchSnapshot('http://127.0.0.1:9', [], k.key));
  const before = gcHeap();
  const { r, applyMs } = applyPushed(plane, n, k.key);
  if (!r.accepted) throw new Error('100k snapshot refused');
  const after = gcHeap();
  console.log(
    `${n} keys: apply ${applyMs.toFixed(0)} ms, heap growth ${((after - before) / 2 ** 20).toFixed(1)} MiB (${((after - before) / n).toFixed(0)} B/key)`,
  );
  await plane.close({ drainMs: 100 });

  // Authentication cost: the same key looked up among 10 and among n keys.
  const req = (secret: string) =>
    ({
      headers: { authorization: `Bearer ${secret}` },
      socket: { remoteAddress: '127.0.0.1' },
    }) as unknown as IncomingMessage;
  for (const size of [10, n]) {
    const keys: ApiKey[] = [];
    for (let i = 0; i < size - 1; i++) keys.push(apiKey('bench').key);
    const compiled = new Admission({ logger: quiet }).compile(
      benchSnapshot('http://127.0.0.1:9', keys, k.key),
    );
    // A new connection per call (shape, checksum, SHA-256, lookup; the request object is built in the
    // loop), and one keep-alive connection (its per-connection memo: the lookup runs once).
    const kept = req(k.secret);
    const iterations = 300_000;
    for (let i = 0; i < 50_000; i++) void compiled.authenticate(req(k.secret));
    for (const [what, probe] of [
      ['new connection', () => req(k.secret)],
      ['same connection', () => kept],
    ] as const) {
      const t = performance.now();
      for (let i = 0; i < iterations; i++) {
        const who = compiled.authenticate(probe());
        if (!('ok' in who) || !who.ok) throw new Error('bench key refused');
      }
      console.log(
        `authenticate with ${size} keys, ${what}: ${(((performance.now() - t) * 1e6) / iterations).toFixed(0)} ns/op`,
      );
    }
  }
}
