// Two versions of gpugate side by side (not a test): the gateway of this tree and of another source
// tree, each its own process (test/bench/gpugate-runner.ts: every request-path feature on) in front
// of the same small upstream. Closed-loop load (undici Pool, test/bench/load.ts) alternates between
// them in short rounds (A B, then B A, ...), and each pair of rounds gives a ratio of gateway CPU per
// request. On a shared machine absolute CPU per request drifts with the load by tens of percent
// between runs; the two sides of a pair see nearly the same load, so the median ratio is the figure.
//
//   git archive <commit> dataplane test package.json tsconfig.json | tar -x -C /tmp/base
//   ln -s "$PWD/node_modules" /tmp/base/node_modules
//   node test/bench/hot-path-ab.ts --base /tmp/base [--rounds 12] [--seconds 2] [--connections 32]
//     [--node-flags='<flags>'] [--base-node-flags='<flags>'] [--sse-chunks 0] [--sse-gap-ms 1]
//
// --sse-chunks N (N > 0): streamed requests instead of small JSON ones. The upstream is
// test/bench/sse-upstream.ts in its own process, answering each `"stream": true` chat request with N
// token events --sse-gap-ms apart and a usage chunk; the gateway takes the streamed request path
// (stream-usage splice, SSE usage filter and tap per chunk, usage event at the end), and the ratio is
// gateway CPU per streamed request, chunks included.
//
// Both gateways run with the data plane's Node.js flags (dataplane/node-flags.ts of this tree) unless
// --node-flags / --base-node-flags say otherwise ('' for none): `--base .` with other flags for the
// base compares two sets of flags on the same code.
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { DATAPLANE_NODE_FLAGS } from '../../dataplane/node-flags.ts';
import { startGateway, type GatewayProcess } from './gateway-process.ts';
import { closedLoop, startFixedUpstream, startSseUpstream } from './load.ts';

const { values: args } = parseArgs({
  options: {
    base: { type: 'string' },
    rounds: { type: 'string', default: '12' },
    seconds: { type: 'string', default: '2' },
    connections: { type: 'string', default: '32' },
    'node-flags': { type: 'string' },
    'base-node-flags': { type: 'string' },
    'sse-chunks': { type: 'string', default: '0' },
    'sse-gap-ms': { type: 'string', default: '1' },
  },
});
if (!args.base) throw new Error('--base <source tree of the other version> is required');
const rounds = Number(args.rounds);
const ms = Number(args.seconds) * 1000;
const connections = Number(args.connections);
const sseChunks = Number(args['sse-chunks']);
if (!Number.isInteger(sseChunks) || sseChunks < 0) {
  throw new Error(
    `--sse-chunks must be a whole number of chunks (0: JSON requests), got ${args['sse-chunks']}`,
  );
}
const flags = (given: string | undefined) =>
  given === undefined ? DATAPLANE_NODE_FLAGS : given.split(' ').filter((f) => f !== '');

const body = JSON.stringify({
  model: 'bench-model',
  ...(sseChunks > 0 ? { stream: true } : {}),
  messages: [{ role: 'user', content: 'Say hello in one word.' }],
  max_tokens: 16,
});
const upstream =
  sseChunks > 0 ? await startSseUpstream(sseChunks, Number(args['sse-gap-ms'])) : await startFixedUpstream();
console.log(
  sseChunks > 0
    ? `streamed requests: ${sseChunks} SSE chunks ${args['sse-gap-ms']} ms apart and a usage chunk each`
    : 'small JSON requests',
);
const sides: { name: string; gw: GatewayProcess; pool: Pool; cpu: number[] }[] = [];
for (const [name, root, nodeFlags] of [
  ['this tree', undefined, flags(args['node-flags'])],
  ['base', args.base, flags(args['base-node-flags'])],
] as const) {
  console.log(`${name}: node flags ${nodeFlags.join(' ') || '(none)'}`);
  const gw = await startGateway(upstream.url, { ...(root ? { root } : {}), nodeFlags });
  sides.push({ name, gw, pool: new Pool(gw.url, { connections, pipelining: 1 }), cpu: [] });
}

async function round(side: (typeof sides)[number], roundMs: number): Promise<number> {
  const request = {
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${side.gw.key}` },
    body,
  };
  const cpu0 = side.gw.cpuUs();
  const { ok, failed } = await closedLoop(side.pool, request, connections, roundMs);
  if (failed > 0) throw new Error(`${failed} requests failed through ${side.name}`);
  return (side.gw.cpuUs() - cpu0) / ok;
}

for (const side of sides) await round(side, 2000); // warm-up (JIT) for both
const ratios: number[] = [];
for (let i = 0; i < rounds; i++) {
  const order = i % 2 === 0 ? sides : [...sides].reverse();
  const perRequest = new Map<string, number>();
  for (const side of order) {
    const us = await round(side, ms);
    side.cpu.push(us);
    perRequest.set(side.name, us);
  }
  const ratio = (perRequest.get('this tree') as number) / (perRequest.get('base') as number);
  ratios.push(ratio);
  console.log(
    `round ${i + 1}: this tree ${(perRequest.get('this tree') as number).toFixed(1)} µs/req, base ${(perRequest.get('base') as number).toFixed(1)} µs/req, ratio ${ratio.toFixed(3)}`,
  );
}
const median = (a: number[]) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2
    ? (s[(s.length - 1) / 2] as number)
    : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};
for (const side of sides) {
  console.log(
    `${side.name}: gateway CPU per request median ${median(side.cpu).toFixed(1)} µs, best ${Math.min(...side.cpu).toFixed(1)} µs`,
  );
}
const sorted = [...ratios].sort((x, y) => x - y);
console.log(
  `CPU per request, this tree ÷ base: median ${median(ratios).toFixed(3)} over ${rounds} pairs (quartiles ${(sorted[Math.floor(rounds / 4)] as number).toFixed(3)}–${(sorted[Math.floor((3 * rounds) / 4)] as number).toFixed(3)})`,
);
for (const side of sides) {
  await side.pool.close();
  await side.gw.stop();
}
upstream.close();
