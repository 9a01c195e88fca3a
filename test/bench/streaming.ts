// Streaming benchmark (not a test): an SSE upstream sends chunks at a fixed pace, each stamped with
// its send time; clients read the same streams directly and through gpugate (own process, every
// feature on). Prints time to first token and per-chunk delivery latency (arrival minus send stamp),
// direct vs gpugate, and the difference; then where the first token's time goes.
//
//   node test/bench/streaming.ts [--streams 16] [--chunks 200] [--gap-ms 5] [--rounds 10]
//                                [--warmup 2000] [--keep-alive] [--prompt-bytes 0] [--metered]
//                                [--node-flags='<flags>']
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
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { Pool } from 'undici';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { DATAPLANE_NODE_FLAGS } from '../../dataplane/node-flags.ts';
import { startGateway } from './gateway-process.ts';
import { startBenchPostgres } from './postgres.ts';

const { values } = parseArgs({
  options: {
    streams: { type: 'string', default: '16' },
    chunks: { type: 'string', default: '200' },
    'gap-ms': { type: 'string', default: '5' },
    rounds: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '2000' },
    'keep-alive': { type: 'boolean', default: false },
    'prompt-bytes': { type: 'string', default: '0' },
    metered: { type: 'boolean', default: false },
    'node-flags': { type: 'string' },
  },
});
const STREAMS = Number(values.streams);
const CHUNKS = Number(values.chunks);
const GAP_MS = Number(values['gap-ms']);
const ROUNDS = Number(values.rounds);
const WARMUP = Number(values.warmup);
const KEEP_ALIVE = values['keep-alive'];
const PROMPT_BYTES = Number(values['prompt-bytes']);
const METERED = values.metered;

/** Wall-clock milliseconds with sub-millisecond precision, comparable between processes on one host. */
const clock = () => performance.timeOrigin + performance.now();

const upstream = spawn(process.execPath, ['test/bench/sse-upstream.ts', String(CHUNKS), String(GAP_MS)], {
  cwd: resolve(import.meta.dirname, '..', '..'),
  stdio: ['ignore', 'pipe', 'inherit'],
});
// Not left listening when this process ends early (a failed start, an exception).
process.on('exit', () => upstream.kill('SIGTERM'));
const upstreamUrl = await new Promise<string>((res, rej) => {
  let out = '';
  upstream.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    const m = /listening (\d+)\n/.exec(out);
    if (m) res(`http://127.0.0.1:${m[1]}`);
  });
  upstream.once('exit', (code) => rej(new Error(`sse-upstream exited with ${code}`)));
});
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

const body = JSON.stringify({
  model: 'bench-model',
  stream: true,
  messages: [{ role: 'user', content: 'hi' + 'x'.repeat(Math.max(0, PROMPT_BYTES - 2)) }],
});
const headers = { 'content-type': 'application/json', authorization: `Bearer ${gw.key}` };

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

const pools = new Map<string, Pool>();

async function run(base: string, into: Sample): Promise<void> {
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
        headers,
      });
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
          headers: { ...headers, 'x-bench-chunks': '1' },
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

await warm(upstreamUrl, WARMUP);
await warm(gw.url, WARMUP);
const direct = emptySample();
const through = emptySample();
for (let round = 0; round < ROUNDS; round++) {
  await run(upstreamUrl, direct);
  await run(gw.url, through);
}
for (const pool of pools.values()) await pool.close();

const out = (s: string) => process.stdout.write(s);
out(
  `${STREAMS} concurrent SSE streams x ${CHUNKS} chunks every ${GAP_MS} ms, ${ROUNDS} rounds (direct and gpugate alternating), ` +
    `after ${WARMUP} warm-up requests each; ${KEEP_ALIVE ? 'client connections kept across rounds' : 'a new client connection per stream and round'}; ` +
    `request body ${Buffer.byteLength(body)} bytes; ${METERED ? 'metering into Postgres with a quota lease' : 'usage events into a counting sink, no quota'}\n\n`,
);
const row = (name: string, a: number, b: number) =>
  out(`| ${name} | ${a.toFixed(3)} | ${b.toFixed(3)} | ${(b - a).toFixed(3)} |\n`);
out('| metric | direct ms | gpugate ms | added ms |\n|---|---|---|---|\n');
for (const [name, key, p] of [
  ['time to first token p50', 'ttft', 50],
  ['time to first token p99', 'ttft', 99],
  ['per-chunk latency p50', 'chunk', 50],
  ['per-chunk latency p99', 'chunk', 99],
  ['first token: request leg p50', 'requestLeg', 50],
  ['first token: upstream wait p50', 'upstreamWait', 50],
  ['first token: response leg p50', 'responseLeg', 50],
] as const) {
  row(name, pct(direct[key], p), pct(through[key], p));
}
if (STREAMS > 1) {
  row(
    'request leg of the first stream to arrive, p50 over rounds',
    pct(direct.firstArrival, 50),
    pct(through.firstArrival, 50),
  );
  row(
    'request leg of the last stream to arrive, p50 over rounds',
    pct(direct.lastArrival, 50),
    pct(through.lastArrival, 50),
  );
}
out(`\nchunks measured: direct ${direct.chunk.length}, gpugate ${through.chunk.length}\n`);
await gw.stop();
await postgres?.stop();
upstream.kill('SIGTERM');
