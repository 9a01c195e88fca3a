// Routing quality (not a test): a heterogeneous simulator fleet (4 endpoints, one twice as slow)
// with mixed prompt lengths, driven at ~85% of its measured capacity by an open-loop (Poisson)
// generator of streaming chat requests, once per balancing policy, gpugate in its own process.
// Prints p50/p90 time to first token and completed requests per second for RoundRobin,
// LeastRequest and QueueAware.
//
//   node test/bench/routing-quality.ts [--seconds 20] [--load 0.85] [--scrape-ms 250]
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { startGateway, type GatewayProcess } from './gateway-process.ts';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '20' },
    load: { type: 'string', default: '0.85' },
    'scrape-ms': { type: 'string', default: '250' },
    seed: { type: 'string', default: '7' },
  },
});
const SECONDS = Number(values.seconds);
const LOAD = Number(values.load);
const SCRAPE_MS = Number(values['scrape-ms']);

// Deterministic request mix: the same sequence of prompts and gaps for every policy.
let state = Number(values.seed);
const random = () => {
  state = (state * 1103515245 + 12345) % 2 ** 31;
  return state / 2 ** 31;
};

interface Shape {
  promptChars: number;
  maxTokens: number;
}

function mix(n: number): Shape[] {
  const out: Shape[] = [];
  for (let i = 0; i < n; i++) {
    const long = random() < 0.3;
    out.push({ promptChars: long ? 6000 : 400, maxTokens: 16 + Math.floor(random() * 48) });
  }
  return out;
}

const sims: Simulator[] = [];
for (const [i, speed] of [1, 1, 1, 0.5].entries()) {
  sims.push(
    await startSimulator({
      name: `sim-${i}${speed < 1 ? '-slow' : ''}`,
      models: ['bench-model'],
      maxBatch: 8,
      decodeMsPerToken: 10,
      prefillMsPerToken: 0.2,
      batchSlowdown: 0.05,
      outputTokens: 64,
      kvCacheTokens: 65_536,
      speed,
      recordRequests: 0,
    }),
  );
}
const urls = sims.map((s) => s.url);

interface Outcome {
  ttft: number[];
  completed: number;
  errors: number;
  seconds: number;
}

async function one(pool: Pool, key: string, shape: Shape, outcome: Outcome): Promise<void> {
  const start = performance.now();
  try {
    const r = await pool.request({
      path: '/v1/chat/completions',
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify({
        model: 'bench-model',
        stream: true,
        max_tokens: shape.maxTokens,
        messages: [{ role: 'user', content: 'x'.repeat(shape.promptChars) }],
      }),
    });
    if (r.statusCode !== 200) {
      outcome.errors++;
      await r.body.dump();
      return;
    }
    let first = true;
    for await (const chunk of r.body) {
      if (first && (chunk as Buffer).includes('"content"')) {
        outcome.ttft.push(performance.now() - start);
        first = false;
      }
    }
    outcome.completed++;
  } catch {
    outcome.errors++;
  }
}

/** Closed loop at high concurrency: the fleet's capacity in completed requests per second. */
async function capacity(gw: GatewayProcess, seconds: number): Promise<number> {
  const pool = new Pool(gw.url, { connections: 128 });
  const outcome: Outcome = { ttft: [], completed: 0, errors: 0, seconds };
  const shapes = mix(100_000);
  let next = 0;
  const end = performance.now() + seconds * 1000;
  const worker = async () => {
    while (performance.now() < end) await one(pool, gw.key, shapes[next++ % shapes.length] as Shape, outcome);
  };
  await Promise.all(Array.from({ length: 4 * 8 * 2 }, worker));
  await pool.close();
  return outcome.completed / seconds;
}

async function openLoop(
  gw: GatewayProcess,
  rate: number,
  seconds: number,
  shapes: Shape[],
  gaps: number[],
): Promise<Outcome> {
  const pool = new Pool(gw.url, { connections: 512 });
  const outcome: Outcome = { ttft: [], completed: 0, errors: 0, seconds };
  const inflight: Promise<void>[] = [];
  const start = performance.now();
  let due = 0;
  for (let i = 0; i < shapes.length; i++) {
    due += (gaps[i] as number) / rate;
    if (due > seconds * 1000) break;
    const wait = start + due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    inflight.push(one(pool, gw.key, shapes[i] as Shape, outcome));
  }
  await Promise.all(inflight);
  outcome.seconds = (performance.now() - start) / 1000;
  await pool.close();
  return outcome;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
};

try {
  const calibrate = await startGateway(urls, { policy: 'LeastRequest', scrapeMs: SCRAPE_MS });
  await capacity(calibrate, 3); // warm-up
  const cap = await capacity(calibrate, 10);
  await calibrate.stop();
  const rate = cap * LOAD;
  process.stdout.write(
    `fleet: 4 simulators (maxBatch 8, decode 10 ms/token, prefill 0.2 ms/token), one at speed 0.5; 30% long prompts (~1,500 tokens), 70% short (~100); 16-63 output tokens\n` +
      `capacity (closed loop, 64 clients, LeastRequest): ${cap.toFixed(1)} req/s; open loop at ${(LOAD * 100).toFixed(0)}%: ${rate.toFixed(1)} req/s for ${SECONDS} s per policy\n\n`,
  );
  const shapes = mix(Math.ceil(rate * SECONDS * 2));
  const gaps = shapes.map(() => -1000 * Math.log(1 - random()));
  process.stdout.write(
    '| policy | TTFT p50 ms | TTFT p90 ms | completed req/s | errors | p90 vs RoundRobin |\n|---|---|---|---|---|---|\n',
  );
  let rrP90 = NaN;
  for (const policy of ['RoundRobin', 'LeastRequest', 'QueueAware'] as const) {
    const gw = await startGateway(urls, { policy, scrapeMs: SCRAPE_MS });
    await new Promise((r) => setTimeout(r, 3 * SCRAPE_MS));
    const o = await openLoop(gw, rate, SECONDS, shapes, gaps);
    await gw.stop();
    const p90 = pct(o.ttft, 90);
    if (policy === 'RoundRobin') rrP90 = p90;
    process.stdout.write(
      `| ${policy} | ${pct(o.ttft, 50).toFixed(0)} | ${p90.toFixed(0)} | ${(o.completed / o.seconds).toFixed(1)} | ${o.errors} | ${(p90 / rrP90).toFixed(2)}× |\n`,
    );
    // Let the fleet drain between policies.
    await new Promise((r) => setTimeout(r, 2000));
  }
} finally {
  await Promise.all(sims.map((s) => s.close()));
}
