// Upload benchmark (not a test): a 100 MiB body generated on the fly (never held in memory) sent to
// a byte-counting upstream directly and through gpugate (own process, every feature on, started with
// the data plane's Node.js flags unless --node-flags says otherwise). Prints throughput for both and
// the data plane's resident-memory growth (peak VmHWM minus RSS before).
//
//   node test/bench/upload.ts [--mib 100] [--rounds 3] [--concurrency 1] [--node-flags='<flags>'] [--download]
//
// --concurrency N sends N uploads at once in each round (N × the body through the gateway; the time
// is that of the whole round). --node-flags= starts the gateway with no Node.js flags (as before
// dataplane/node-flags.ts), to compare. --download turns it around: the upstream answers a GET with
// the body (an image download; only on /v1/downloads/, not on the gateway's health checks) and the
// client counts it.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { request } from 'undici';
import { DATAPLANE_NODE_FLAGS } from '../../dataplane/node-flags.ts';
import { repeatedBody } from '../fixtures/bodies.ts';
import { startGateway } from './gateway-process.ts';

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '100' },
    rounds: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '1' },
    'node-flags': { type: 'string' },
    download: { type: 'boolean', default: false },
  },
});
const DOWNLOAD = values.download;
const BYTES = Number(values.mib) * 1024 * 1024;
const ROUNDS = Number(values.rounds);
const CONCURRENCY = Number(values.concurrency);
const nodeFlags =
  values['node-flags'] === undefined
    ? DATAPLANE_NODE_FLAGS
    : values['node-flags'].split(' ').filter((f) => f !== '');
for (const [name, n] of [
  ['--mib', BYTES],
  ['--rounds', ROUNDS],
  ['--concurrency', CONCURRENCY],
] as const) {
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer`);
}

const upstream = createServer((req, res) => {
  if (DOWNLOAD && req.url?.startsWith('/v1/downloads/')) {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(BYTES) });
    body().pipe(res);
    return;
  }
  let n = 0;
  req.on('data', (c: Buffer) => (n += c.length));
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ received: n }));
  });
});
await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
const upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
const gw = await startGateway(upstreamUrl, { nodeFlags });

const body = () => repeatedBody(Buffer.alloc(64 * 1024, 0x5a), BYTES);

async function download(base: string): Promise<void> {
  const r = await request(base + '/v1/downloads/result.png', {
    headers: { 'x-gpugate-model': 'bench-model', authorization: `Bearer ${gw.key}` },
  });
  let n = 0;
  for await (const c of r.body) n += (c as Buffer).length;
  if (r.statusCode !== 200 || n !== BYTES) throw new Error(`download failed: ${r.statusCode}, ${n} bytes`);
}

async function upload(base: string): Promise<void> {
  const r = await request(base + '/v1/uploads', {
    method: 'POST',
    body: body(),
    headers: {
      'content-type': 'application/octet-stream',
      'content-length': String(BYTES),
      'x-gpugate-model': 'bench-model',
      authorization: `Bearer ${gw.key}`,
    },
  });
  const answer = (await r.body.json()) as { received: number };
  if (r.statusCode !== 200 || answer.received !== BYTES)
    throw new Error(`upload failed: ${r.statusCode} ${JSON.stringify(answer)}`);
}

/** Seconds for CONCURRENCY uploads (or downloads) at once. */
async function round(base: string): Promise<number> {
  const start = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, () => (DOWNLOAD ? download(base) : upload(base))));
  return (performance.now() - start) / 1000;
}

try {
  const before = gw.memory();
  const direct: number[] = [];
  const through: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    direct.push(await round(upstreamUrl));
    through.push(await round(gw.url));
  }
  const after = gw.memory();
  const mibps = (s: number) => (CONCURRENCY * BYTES) / 1024 / 1024 / s;
  const best = (xs: number[]) => Math.min(...xs);
  process.stdout.write(
    `${values.mib} MiB ${DOWNLOAD ? 'download' : 'upload'}${CONCURRENCY > 1 ? ` x ${CONCURRENCY} at once` : ''} x ${ROUNDS} rounds (best of each); gateway node flags: ${nodeFlags.join(' ') || '(none)'}\n\n`,
  );
  process.stdout.write('| path | seconds | MiB/s |\n|---|---|---|\n');
  process.stdout.write(`| direct | ${best(direct).toFixed(3)} | ${mibps(best(direct)).toFixed(0)} |\n`);
  process.stdout.write(`| gpugate | ${best(through).toFixed(3)} | ${mibps(best(through)).toFixed(0)} |\n`);
  process.stdout.write(
    `\ngpugate RSS before ${(before.rss / 2 ** 20).toFixed(1)} MiB, peak during uploads ${(after.peak / 2 ** 20).toFixed(1)} MiB: growth ${((after.peak - before.rss) / 2 ** 20).toFixed(1)} MiB\n`,
  );
} finally {
  await gw.stop();
  upstream.close();
}
