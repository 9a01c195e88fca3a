// Streaming benchmark (not a test): an SSE upstream sends chunks at a fixed pace, each stamped with
// its send time; clients read the same streams directly and through gpugate (own process, every
// feature on). Prints time to first token and per-chunk delivery latency (arrival minus send stamp),
// direct vs gpugate, and the difference.
//
//   node test/bench/streaming.ts [--streams 16] [--chunks 200] [--gap-ms 5] [--rounds 3] [--node-flags='<flags>']
//
// The gateway runs with the data plane's Node.js flags (dataplane/node-flags.ts) unless --node-flags
// says otherwise ('' for none).
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { DATAPLANE_NODE_FLAGS } from '../../dataplane/node-flags.ts';
import { startGateway } from './gateway-process.ts';

const { values } = parseArgs({
  options: {
    streams: { type: 'string', default: '16' },
    chunks: { type: 'string', default: '200' },
    'gap-ms': { type: 'string', default: '5' },
    rounds: { type: 'string', default: '3' },
    'node-flags': { type: 'string' },
  },
});
const STREAMS = Number(values.streams);
const CHUNKS = Number(values.chunks);
const GAP_MS = Number(values['gap-ms']);
const ROUNDS = Number(values.rounds);

/** Wall-clock milliseconds with sub-millisecond precision, comparable between processes on one host. */
const clock = () => performance.timeOrigin + performance.now();

const upstream = createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    let i = 0;
    const timer = setInterval(() => {
      if (i === CHUNKS) {
        clearInterval(timer);
        res.write(`data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":${CHUNKS}}}\n\n`);
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
const nodeFlags =
  values['node-flags'] === undefined
    ? DATAPLANE_NODE_FLAGS
    : values['node-flags'].split(' ').filter((f) => f !== '');
const gw = await startGateway(upstreamUrl, { nodeFlags });

interface Sample {
  ttft: number[];
  chunk: number[];
}

async function run(base: string): Promise<Sample> {
  const pool = new Pool(base, { connections: STREAMS });
  const sample: Sample = { ttft: [], chunk: [] };
  const body = JSON.stringify({
    model: 'bench-model',
    stream: true,
    messages: [{ role: 'user', content: 'hi' }],
  });
  await Promise.all(
    Array.from({ length: STREAMS }, async () => {
      const start = clock();
      const r = await pool.request({
        path: '/v1/chat/completions',
        method: 'POST',
        body,
        headers: { 'content-type': 'application/json', authorization: `Bearer ${gw.key}` },
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
          if (first) {
            sample.ttft.push(now - start);
            first = false;
          }
          sample.chunk.push(now - Number(m[1]));
        }
      }
    }),
  );
  await pool.close();
  return sample;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
};

const direct: Sample = { ttft: [], chunk: [] };
const through: Sample = { ttft: [], chunk: [] };
await run(upstreamUrl); // warm-up
await run(gw.url);
for (let round = 0; round < ROUNDS; round++) {
  const d = await run(upstreamUrl);
  const g = await run(gw.url);
  direct.ttft.push(...d.ttft);
  direct.chunk.push(...d.chunk);
  through.ttft.push(...g.ttft);
  through.chunk.push(...g.chunk);
}
process.stdout.write(
  `${STREAMS} concurrent SSE streams x ${CHUNKS} chunks every ${GAP_MS} ms, ${ROUNDS} rounds (direct and gpugate alternating)\n\n`,
);
process.stdout.write('| metric | direct ms | gpugate ms | added ms |\n|---|---|---|---|\n');
for (const [name, key, p] of [
  ['time to first token p50', 'ttft', 50],
  ['time to first token p99', 'ttft', 99],
  ['per-chunk latency p50', 'chunk', 50],
  ['per-chunk latency p99', 'chunk', 99],
] as const) {
  const a = pct(direct[key], p);
  const b = pct(through[key], p);
  process.stdout.write(`| ${name} | ${a.toFixed(3)} | ${b.toFixed(3)} | ${(b - a).toFixed(3)} |\n`);
}
process.stdout.write(`\nchunks measured: direct ${direct.chunk.length}, gpugate ${through.chunk.length}\n`);
await gw.stop();
upstream.close();
