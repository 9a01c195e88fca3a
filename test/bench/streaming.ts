// Streaming benchmark (not a test): an SSE upstream sends chunks at a fixed pace, each stamped with
// its send time; clients read the same streams directly and through gpugate (own process, every
// feature on). Prints time to first token and per-chunk delivery latency (arrival minus send stamp),
// direct vs gpugate, and the difference; then where the first token's time goes.
//
//   node test/bench/streaming.ts [--streams 16] [--chunks 200] [--gap-ms 5] [--rounds 3]
//                                [--warmup 2000] [--keep-alive] [--prompt-bytes 0]
//
// The upstream lives in this process, so its stamps and the clients' clock are one clock: the time to
// first token splits into the request leg (client sends → upstream has the request), the upstream's
// own wait for its first chunk (the same timer both ways), and the response leg (first chunk sent →
// client has it).
//
// --warmup: requests through each path before anything is measured (one-chunk streams, 8 at a time or
// --streams), so that both are measured with their request paths compiled, as in a gateway that
// serves traffic. --warmup 0 measures a fresh process (the figures before 2026-11-21 were taken so:
// 20-60 requests, most of them through code V8 had not optimized yet).
// --keep-alive: clients keep their connections across rounds (else a new connection per round).
// --prompt-bytes: pad the user message to this size (the gateway reads, parses and rewrites the body).
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { startGateway } from './gateway-process.ts';

const { values } = parseArgs({
  options: {
    streams: { type: 'string', default: '16' },
    chunks: { type: 'string', default: '200' },
    'gap-ms': { type: 'string', default: '5' },
    rounds: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '2000' },
    'keep-alive': { type: 'boolean', default: false },
    'prompt-bytes': { type: 'string', default: '0' },
  },
});
const STREAMS = Number(values.streams);
const CHUNKS = Number(values.chunks);
const GAP_MS = Number(values['gap-ms']);
const ROUNDS = Number(values.rounds);
const WARMUP = Number(values.warmup);
const KEEP_ALIVE = values['keep-alive'];
const PROMPT_BYTES = Number(values['prompt-bytes']);

/** Wall-clock milliseconds with sub-millisecond precision, comparable between processes on one host. */
const clock = () => performance.timeOrigin + performance.now();

/** When each measured request reached the upstream, by the id the client gave it. */
const arrivals = new Map<string, number>();

const upstream = createServer((req, res) => {
  const arrived = clock();
  if (req.url === '/health') {
    // The gateway's active health check: answered like a model server's, not with a stream.
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"status":"ok"}');
    return;
  }
  const id = req.headers['x-bench-stream'];
  if (typeof id === 'string') arrivals.set(id, arrived);
  // Warm-up requests ask for a one-chunk stream.
  const chunks = req.headers['x-bench-chunks'] === undefined ? CHUNKS : Number(req.headers['x-bench-chunks']);
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    let i = 0;
    const timer = setInterval(() => {
      if (i === chunks) {
        clearInterval(timer);
        res.write(`data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":${chunks}}}\n\n`);
        res.end('data: [DONE]\n\n');
        return;
      }
      res.write(`data: {"t":${clock()},"i":${i++},"choices":[{"delta":{"content":"tok"}}]}\n\n`);
    }, GAP_MS);
    res.on('close', () => clearInterval(timer));
  });
});
await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
const upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
const gw = await startGateway(upstreamUrl);

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
let nextId = 0;

async function run(base: string, into: Sample): Promise<void> {
  const pool = (KEEP_ALIVE && pools.get(base)) || new Pool(base, { connections: STREAMS });
  if (KEEP_ALIVE) pools.set(base, pool);
  const legs: number[] = [];
  await Promise.all(
    Array.from({ length: STREAMS }, async () => {
      const id = String(nextId++);
      const start = clock();
      const r = await pool.request({
        path: '/v1/chat/completions',
        method: 'POST',
        body,
        headers: { ...headers, 'x-bench-stream': id },
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
            const arrived = arrivals.get(id) as number;
            arrivals.delete(id);
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
    `request body ${Buffer.byteLength(body)} bytes\n\n`,
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
upstream.close();
