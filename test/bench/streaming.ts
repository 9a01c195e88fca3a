// Streaming benchmark (not a test): an SSE upstream sends chunks at a fixed pace, each stamped with
// its send time; clients read the same streams directly, through gpugate (own process, every
// feature on) and through nginx (one worker, `proxy_buffering off`, upstream keep-alive: the cost of
// one more process hop on this box, next to gpugate's). Prints time to first token and per-chunk
// delivery latency (arrival minus send stamp) for each path, what each proxy adds to direct, and
// where the first token's time goes.
//
//   node test/bench/streaming.ts [--streams 16] [--chunks 200] [--gap-ms 5] [--rounds 10]
//                                [--ttft-rounds 200] [--ttft-max-seconds 120]
//                                [--warmup 2000] [--keep-alive] [--prompt-bytes 0] [--metered]
//                                [--node-flags='<flags>'] [--no-nginx]
//
// --rounds: rounds of `--streams` streams of `--chunks` chunks, per path; per-chunk latency and a
// first time to first token come from these. --ttft-rounds: then as many rounds of `--streams`
// one-chunk streams per path, for the first token alone (a round takes about one gap instead of
// `--chunks` gaps, so a one-stream p99 rests on hundreds of first tokens, not 20); stopped after
// --ttft-max-seconds if the machine is slow, and the sample counts are printed either way. Paths
// take turns within each round, in an order that rotates from round to round. Each proxy's CPU time
// (/proc) over its own rounds gives its CPU per stream of either kind, and from the two, per chunk.
// nginx is skipped, with a message, when it is not on PATH (`make bench-tools` installs it).
//
// The gateway runs with the data plane's Node.js flags (dataplane/node-flags.ts) unless --node-flags
// says otherwise ('' for none).
//
// The upstream (test/bench/sse-upstream.ts) runs in its own process, as a model server does: a
// direct client crosses one process boundary each way, a client through gpugate two, and the
// difference is the gateway's. (Until 2026-11-21 the upstream ran in this process, so the direct
// path crossed none and gpugate was charged two crossings each way instead of one.) The stamps of
// the three processes are comparable (one host, one wall clock), so the time to first token splits
// into the request leg (client sends → upstream has the request), the upstream's own wait for its
// first chunk (the same timer both ways), and the response leg (first chunk sent → client has it).
//
// --warmup: requests through each path before anything is measured (one-chunk streams, 8 at a time or
// --streams), so that both are measured with their request paths compiled, as in a gateway that
// serves traffic. --warmup 0 measures a fresh process (the figures before 2026-11-21 were taken so:
// 20-60 requests, most of them through code V8 had not optimized yet).
// --keep-alive: clients keep their connections across rounds (else a new connection per round).
// --prompt-bytes: pad the user message to this size (the gateway reads, parses and rewrites the body).
// --metered: gpugate meters into Postgres (DATABASE_URL or an embedded server) with a quota on the
// tenant, so admission takes a quota lease (test/bench/gpugate-runner.ts); else a counting sink.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { Pool } from 'undici';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { DATAPLANE_NODE_FLAGS } from '../../dataplane/node-flags.ts';
import { freePort } from '../../operator/standalone/postgres.ts';
import { startGateway } from './gateway-process.ts';
import { processTreeCpu, startSseUpstream, waitForPort } from './load.ts';
import { startBenchPostgres } from './postgres.ts';

const { values } = parseArgs({
  options: {
    streams: { type: 'string', default: '16' },
    chunks: { type: 'string', default: '200' },
    'gap-ms': { type: 'string', default: '5' },
    rounds: { type: 'string', default: '10' },
    'ttft-rounds': { type: 'string', default: '200' },
    'ttft-max-seconds': { type: 'string', default: '120' },
    warmup: { type: 'string', default: '2000' },
    'keep-alive': { type: 'boolean', default: false },
    'prompt-bytes': { type: 'string', default: '0' },
    metered: { type: 'boolean', default: false },
    'node-flags': { type: 'string' },
    'no-nginx': { type: 'boolean', default: false },
  },
});
const STREAMS = Number(values.streams);
const CHUNKS = Number(values.chunks);
const GAP_MS = Number(values['gap-ms']);
const ROUNDS = Number(values.rounds);
const TTFT_ROUNDS = Number(values['ttft-rounds']);
const TTFT_MAX_MS = Number(values['ttft-max-seconds']) * 1000;
const WARMUP = Number(values.warmup);
const KEEP_ALIVE = values['keep-alive'];
const PROMPT_BYTES = Number(values['prompt-bytes']);
const METERED = values.metered;

/** Wall-clock milliseconds with sub-millisecond precision, comparable between processes on one host. */
const clock = () => performance.timeOrigin + performance.now();

const upstream = await startSseUpstream(CHUNKS, GAP_MS);
const upstreamUrl = upstream.url;
const postgres = METERED ? await startBenchPostgres() : null;
if (postgres) {
  const db = new pg.Pool({ connectionString: postgres.url, max: 1 });
  db.on('error', () => undefined);
  await migrate(db);
  await db.end();
}
const nodeFlags =
  values['node-flags'] === undefined
    ? DATAPLANE_NODE_FLAGS
    : values['node-flags'].split(' ').filter((f) => f !== '');
const gw = await startGateway(upstreamUrl, postgres ? { metering: postgres.url, nodeFlags } : { nodeFlags });

/**
 * nginx as a streaming reverse proxy, configured as one would for SSE: one worker, responses not
 * buffered (each upstream read is written on at once), HTTP/1.1 keep-alive to the upstream.
 */
async function startNginx(upstream: string): Promise<{ url: string; cpuUs(): number; stop(): void } | null> {
  if (values['no-nginx']) return null;
  if (spawnSync('sh', ['-c', 'command -v nginx']).status !== 0) {
    process.stdout.write(
      'nginx not found on PATH: measuring direct and gpugate only (make bench-tools installs it)\n',
    );
    return null;
  }
  const dir = mkdtempSync(join(tmpdir(), 'gpugate-stream-nginx-'));
  const port = await freePort();
  writeFileSync(
    join(dir, 'nginx.conf'),
    `worker_processes 1; daemon off; pid ${dir}/nginx.pid; error_log ${dir}/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 120s;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy;
  upstream sse { server ${new URL(upstream).host}; keepalive 64; }
  server { listen 127.0.0.1:${port};
    location / { proxy_pass http://sse; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; } } }
`,
  );
  const child: ChildProcess = spawn('nginx', ['-c', join(dir, 'nginx.conf'), '-p', dir], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const stop = () => {
    if (child.exitCode === null) child.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', stop);
  await waitForPort(port);
  // The master and its worker (the one that serves), found at the first reading (after the warm-up,
  // so the worker has long been forked).
  const cpuUs = processTreeCpu(child.pid as number);
  return { url: `http://127.0.0.1:${port}`, cpuUs, stop };
}
const nginx = await startNginx(upstreamUrl);

const body = JSON.stringify({
  model: 'bench-model',
  stream: true,
  messages: [{ role: 'user', content: 'hi' + 'x'.repeat(Math.max(0, PROMPT_BYTES - 2)) }],
});
const headers = { 'content-type': 'application/json', authorization: `Bearer ${gw.key}` };
const oneChunk = { ...headers, 'x-bench-chunks': '1' };

interface Sample {
  ttft: number[];
  chunk: number[];
  /** Client start → upstream has the request. */
  requestLeg: number[];
  /** Upstream has the request → it stamps the first chunk. */
  upstreamWait: number[];
  /** First chunk stamped → client has it. */
  responseLeg: number[];
  /** Per round: the request legs of the first and of the last stream to reach the upstream. */
  firstArrival: number[];
  lastArrival: number[];
}
const emptySample = (): Sample => ({
  ttft: [],
  chunk: [],
  requestLeg: [],
  upstreamWait: [],
  responseLeg: [],
  firstArrival: [],
  lastArrival: [],
});

interface Path {
  name: string;
  base: string;
  /** The proxy's CPU time so far in microseconds (null: direct, no proxy). */
  cpuUs: (() => number) | null;
  /** The --rounds (many chunks per stream). */
  streamed: Sample;
  /** The --ttft-rounds (one chunk per stream). */
  first: Sample;
  /** The proxy's CPU time (µs) and the wall time (ms) of its own --rounds and --ttft-rounds. */
  streamedCpu: { us: number; ms: number };
  firstCpu: { us: number; ms: number };
  /** Its CPU time while the other paths ran their rounds: its own background work (health checks). */
  idleCpu: { us: number; ms: number };
}
const path = (name: string, base: string, cpuUs: (() => number) | null): Path => ({
  name,
  base,
  cpuUs,
  streamed: emptySample(),
  first: emptySample(),
  streamedCpu: { us: 0, ms: 0 },
  firstCpu: { us: 0, ms: 0 },
  idleCpu: { us: 0, ms: 0 },
});

/** Runs `p`'s round, adding each proxy's CPU to p's own tally (`into`) or to its idle one. */
async function measured(p: Path, into: (x: Path) => { us: number; ms: number }, round: () => Promise<void>) {
  const before = paths.map((x) => x.cpuUs?.() ?? 0);
  const t0 = performance.now();
  await round();
  const ms = performance.now() - t0;
  paths.forEach((x, i) => {
    const tally = x === p ? into(x) : x.idleCpu;
    tally.us += (x.cpuUs?.() ?? 0) - (before[i] as number);
    tally.ms += ms;
  });
}
const paths: Path[] = [path('direct', upstreamUrl, null), path('gpugate', gw.url, () => gw.cpuUs())];
if (nginx) paths.push(path('nginx', nginx.url, nginx.cpuUs));

const pools = new Map<string, Pool>();

async function run(base: string, into: Sample, reqHeaders: Record<string, string>): Promise<void> {
  const pool = (KEEP_ALIVE && pools.get(base)) || new Pool(base, { connections: STREAMS });
  if (KEEP_ALIVE) pools.set(base, pool);
  const legs: number[] = [];
  await Promise.all(
    Array.from({ length: STREAMS }, async () => {
      const start = clock();
      const r = await pool.request({
        path: '/v1/chat/completions',
        method: 'POST',
        body,
        headers: reqHeaders,
      });
      if (r.statusCode !== 200) throw new Error(`${base} answered ${r.statusCode}: ${await r.body.text()}`);
      let first = true;
      let buf = '';
      for await (const c of r.body) {
        const now = clock();
        buf += (c as Buffer).toString();
        let at: number;
        while ((at = buf.indexOf('\n\n')) >= 0) {
          const event = buf.slice(0, at);
          buf = buf.slice(at + 2);
          const m = /"t":([\d.]+)/.exec(event);
          if (!m) continue;
          const stamp = Number(m[1]);
          if (first) {
            first = false;
            const arrived = Number(/"a":([\d.]+)/.exec(event)?.[1]);
            into.ttft.push(now - start);
            into.requestLeg.push(arrived - start);
            into.upstreamWait.push(stamp - arrived);
            into.responseLeg.push(now - stamp);
            legs.push(arrived - start);
          }
          into.chunk.push(now - stamp);
        }
      }
    }),
  );
  legs.sort((a, b) => a - b);
  into.firstArrival.push(legs[0] as number);
  into.lastArrival.push(legs[legs.length - 1] as number);
  if (!KEEP_ALIVE) await pool.close();
}

/** `count` one-chunk streams, `STREAMS` (at least 8) at a time, on connections kept for the warm-up. */
async function warm(base: string, count: number): Promise<void> {
  const width = Math.max(8, STREAMS);
  const pool = new Pool(base, { connections: width });
  let left = count;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (left-- > 0) {
        const r = await pool.request({
          path: '/v1/chat/completions',
          method: 'POST',
          body,
          headers: oneChunk,
        });
        await r.body.dump();
      }
    }),
  );
  await pool.close();
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
};

/** The paths in the order of round `i`: each takes each place in turn, so none is always first. */
const turn = (i: number) => paths.map((_, k) => paths[(i + k) % paths.length] as Path);

for (const p of paths) await warm(p.base, WARMUP);
for (let round = 0; round < ROUNDS; round++) {
  for (const p of turn(round))
    await measured(
      p,
      (x) => x.streamedCpu,
      () => run(p.base, p.streamed, headers),
    );
}
const ttftUntil = performance.now() + TTFT_MAX_MS;
let ttftRounds = 0;
while (ttftRounds < TTFT_ROUNDS && performance.now() < ttftUntil) {
  for (const p of turn(ttftRounds))
    await measured(
      p,
      (x) => x.firstCpu,
      () => run(p.base, p.first, oneChunk),
    );
  ttftRounds++;
}
for (const pool of pools.values()) await pool.close();

const out = (s: string) => process.stdout.write(s);
out(
  `${STREAMS} concurrent SSE streams x ${CHUNKS} chunks every ${GAP_MS} ms, ${ROUNDS} rounds, then ${ttftRounds} rounds of ${STREAMS} one-chunk streams` +
    `${ttftRounds < TTFT_ROUNDS ? ` (of ${TTFT_ROUNDS} asked: --ttft-max-seconds reached)` : ''}; paths ${paths.map((p) => p.name).join(', ')} taking turns; ` +
    `after ${WARMUP} warm-up requests each; ${KEEP_ALIVE ? 'client connections kept across rounds' : 'a new client connection per stream and round'}; ` +
    `request body ${Buffer.byteLength(body)} bytes; ${METERED ? 'metering into Postgres with a quota lease' : 'usage events into a counting sink, no quota'}\n\n`,
);
const [direct, ...proxies] = paths as [Path, ...Path[]];
out(
  `| metric | n | direct ms | ${proxies.map((p) => `${p.name} ms | ${p.name} added ms`).join(' | ')} |\n` +
    `|---|---|---|${proxies.map(() => '---|---|').join('')}\n`,
);
const row = (name: string, pick: (p: Path) => number[], p: number) => {
  const d = pct(pick(direct), p);
  const cells = proxies.map((x) => {
    const v = pct(pick(x), p);
    return `${v.toFixed(3)} | ${(v - d).toFixed(3)}`;
  });
  out(`| ${name} | ${pick(direct).length} | ${d.toFixed(3)} | ${cells.join(' | ')} |\n`);
};
for (const [name, key, p] of [
  ['per-chunk latency p50', 'chunk', 50],
  ['per-chunk latency p99', 'chunk', 99],
  ['time to first token p50 (chunk rounds)', 'ttft', 50],
  ['time to first token p99 (chunk rounds)', 'ttft', 99],
] as const) {
  row(name, (x) => x.streamed[key], p);
}
if (ttftRounds > 0) {
  for (const [name, key, p] of [
    ['time to first token p50', 'ttft', 50],
    ['time to first token p90', 'ttft', 90],
    ['time to first token p99', 'ttft', 99],
    ['first token: request leg p50', 'requestLeg', 50],
    ['first token: request leg p99', 'requestLeg', 99],
    ['first token: upstream wait p50', 'upstreamWait', 50],
    ['first token: response leg p50', 'responseLeg', 50],
    ['first token: response leg p99', 'responseLeg', 99],
  ] as const) {
    row(`${name} (first-token rounds)`, (x) => x.first[key], p);
  }
  if (STREAMS > 1) {
    row('request leg of the first stream to arrive, p50 over rounds', (x) => x.first.firstArrival, 50);
    row('request leg of the last stream to arrive, p50 over rounds', (x) => x.first.lastArrival, 50);
  }
}
// CPU per stream of each proxy over its own rounds, less its background rate (measured while the
// other paths ran) over their length; /proc counts in 10 ms ticks, so the total is printed too. The
// two kinds of stream differ by CHUNKS - 1 chunks, which gives the CPU per chunk.
for (const p of proxies) {
  const idlePerMs = p.idleCpu.ms > 0 ? p.idleCpu.us / p.idleCpu.ms : 0;
  const perStream = (t: { us: number; ms: number }, streams: number) =>
    streams > 0 ? (t.us - idlePerMs * t.ms) / streams : NaN;
  const streamed = perStream(p.streamedCpu, ROUNDS * STREAMS);
  const first = perStream(p.firstCpu, ttftRounds * STREAMS);
  out(
    `\n${p.name} CPU: ${streamed.toFixed(0)} µs per ${CHUNKS}-chunk stream (of ${(p.streamedCpu.us / 1000).toFixed(0)} ms measured), ` +
      `${first.toFixed(0)} µs per one-chunk stream (of ${(p.firstCpu.us / 1000).toFixed(0)} ms)` +
      (CHUNKS > 1 && ttftRounds > 0
        ? `, so ${((streamed - first) / (CHUNKS - 1)).toFixed(1)} µs per further chunk`
        : '') +
      `; background ${(idlePerMs * 1000).toFixed(0)} µs/s`,
  );
}
out('\n');
out(
  `\nsamples per path: ${paths.map((p) => `${p.name} ${p.streamed.chunk.length} chunks, ${p.streamed.ttft.length + p.first.ttft.length} first tokens`).join('; ')}\n`,
);
await gw.stop();
nginx?.stop();
await postgres?.stop();
upstream.close();
