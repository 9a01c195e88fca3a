// Warm-up benchmark (not a test): what the data plane's request-path warm-up (dataplane/warmup.ts)
// costs at start and what it buys the first real requests. Each run starts `dataplane/main.ts` (as the
// image runs it, with the bench snapshot: test/bench/bench-snapshot.ts) with the warm-up off and with
// it on, in alternating order, and measures:
//   - time to ready: spawn → the first 200 from /readyz (polled every 5 ms), and the warm-up's own
//     duration from its log line;
//   - the gateway's share of the first token of the first `--requests` real streams, sent one after
//     another on one kept connection: the request leg (client sends → the upstream has it) plus the
//     response leg (the upstream stamps its first chunk → the client has it), i.e. time to first token
//     without the upstream's own wait; p50 of the first 30 and of the rest;
//   - with --trace: V8's optimizations (Maglev and Turbofan compiles finished) and deoptimizations
//     that happen after ready, during the real requests (--trace-opt --trace-deopt on the gateway;
//     those flags slow it, so the timings of a --trace run are not comparable with a plain one).
// The client (this process) is warmed on the upstream directly first, so its own cold code is not
// charged to whichever gateway comes first.
//
//   node test/bench/warmup.ts [--runs 3] [--requests 200] [--warmup-requests 2000] [--budget-ms 2000] [--trace]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { canonicalJson } from '../../dataplane/config/revision.ts';
import { startDataPlaneProcess } from '../fixtures/processes.ts';
import { benchSnapshot } from './bench-snapshot.ts';
import { startSseUpstream } from './load.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    requests: { type: 'string', default: '200' },
    'warmup-requests': { type: 'string', default: '2000' },
    'budget-ms': { type: 'string', default: '2000' },
    trace: { type: 'boolean', default: false },
  },
});
const RUNS = Number(values.runs);
const REQUESTS = Number(values.requests);
const WARMUP = values['warmup-requests'];
const BUDGET = values['budget-ms'];
const TRACE = values.trace;
const FIRST = 30;

const clock = () => performance.timeOrigin + performance.now();

const upstream = await startSseUpstream(20, 5);
const upstreamUrl = upstream.url;

const dir = mkdtempSync(join(tmpdir(), 'gpugate-warmup-bench-'));
const { snapshot, secret } = benchSnapshot(upstreamUrl);
const snapshotFile = join(dir, 'snapshot.json');
// As the operator sends it: canonical JSON (sorted keys), so the objects have a pushed snapshot's shapes.
writeFileSync(snapshotFile, canonicalJson(snapshot));
const body = JSON.stringify({
  model: 'bench-model',
  stream: true,
  messages: [{ role: 'user', content: 'hi' }],
});
const headers = { 'content-type': 'application/json', authorization: `Bearer ${secret}` };

/** The gateway's share of one stream's first token (request leg + response leg), ms. */
async function stream(pool: Pool): Promise<number> {
  const start = clock();
  const r = await pool.request({ path: '/v1/chat/completions', method: 'POST', body, headers });
  let buf = '';
  let share = NaN;
  for await (const c of r.body) {
    const now = clock();
    buf += (c as Buffer).toString();
    if (Number.isNaN(share)) {
      const m = /"t":([\d.]+),"a":([\d.]+)/.exec(buf);
      if (m) share = Number(m[2]) - start + (now - Number(m[1]));
    }
  }
  if (r.statusCode !== 200 || Number.isNaN(share))
    throw new Error(`stream answered ${r.statusCode}: ${buf.slice(0, 200)}`);
  return share;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : (s[Math.floor(s.length / 2)] as number);
};

interface RunResult {
  readyMs: number;
  warmupMs: number | null;
  firstP50: number;
  restP50: number;
  optimized: number;
  deopts: number;
}

async function once(warmupRequests: string): Promise<RunResult> {
  const started = performance.now();
  const p = await startDataPlaneProcess({
    args: ['--snapshot', snapshotFile],
    env: { GPUGATE_WARMUP_REQUESTS: warmupRequests, GPUGATE_WARMUP_BUDGET_MS: BUDGET, LOG_LEVEL: 'info' },
    nodeFlags: TRACE ? ['--trace-opt', '--trace-deopt'] : [],
    timeoutMs: 60_000,
  });
  try {
    const adminUrl = p.adminUrl;
    let readyMs = NaN;
    for (let i = 0; i < 12_000; i++) {
      const res = await fetch(`${adminUrl}/readyz`).catch(() => null);
      if (res?.status === 200) {
        readyMs = performance.now() - started;
        break;
      }
      await res?.body?.cancel();
      await new Promise((r) => setTimeout(r, 5));
    }
    if (Number.isNaN(readyMs)) throw new Error('the gateway did not become ready within 60 s');
    const done = p.line('warm-up done') ?? p.line('warm-up stopped by its time budget; serving');
    // Compile jobs started before ready finish in the background; let them, then mark the trace.
    await new Promise((r) => setTimeout(r, 300));
    const mark = p.log().length;
    const pool = new Pool(p.url, { connections: 1 });
    const shares: number[] = [];
    for (let i = 0; i < REQUESTS; i++) shares.push(await stream(pool));
    await pool.close();
    const after = p.log().slice(mark);
    return {
      readyMs,
      warmupMs: done ? (done.durationMs as number) : null,
      firstP50: median(shares.slice(0, FIRST)),
      restP50: median(shares.slice(FIRST)),
      optimized: (after.match(/\[completed (compiling|optimizing) .*\(target (MAGLEV|TURBOFAN)/g) ?? [])
        .length,
      deopts: (after.match(/\[bailout \(kind: /g) ?? []).length,
    };
  } finally {
    await p.kill();
  }
}

// The client's own code, warm before any gateway is measured.
const warmClient = new Pool(upstreamUrl, { connections: 1 });
for (let i = 0; i < 300; i++) await stream(warmClient);
await warmClient.close();

const results: Record<'off' | 'on', RunResult[]> = { off: [], on: [] };
for (let run = 0; run < RUNS; run++) {
  const order: ('off' | 'on')[] = run % 2 === 0 ? ['off', 'on'] : ['on', 'off'];
  for (const mode of order) {
    const r = await once(mode === 'off' ? '0' : WARMUP);
    results[mode].push(r);
    process.stdout.write(
      `run ${run + 1} warm-up ${mode}: ready ${r.readyMs.toFixed(0)} ms (warm-up ${r.warmupMs ?? '-'} ms), ` +
        `gateway share of the first token p50 ${r.firstP50.toFixed(3)} ms (first ${FIRST}) ${r.restP50.toFixed(3)} ms (rest)` +
        (TRACE ? `, after ready: ${r.optimized} optimizations, ${r.deopts} deoptimizations` : '') +
        '\n',
    );
  }
}

const m = (mode: 'off' | 'on', key: keyof RunResult) =>
  median(results[mode].map((r) => r[key]).filter((v): v is number => v !== null));
const out = (s: string) => process.stdout.write(s);
out(
  `\n${RUNS} runs each, warm-up ${WARMUP} requests within ${BUDGET} ms when on; ${REQUESTS} streams (20 chunks, 5 ms apart) after ready, one kept connection${TRACE ? '; V8 traced' : ''}\n\n`,
);
out('| median over runs | warm-up off | warm-up on | on ÷ off |\n|---|---|---|---|\n');
const row = (name: string, key: keyof RunResult, digits: number) => {
  const a = m('off', key);
  const b = m('on', key);
  out(`| ${name} | ${a.toFixed(digits)} | ${b.toFixed(digits)} | ${(b / a).toFixed(2)} |\n`);
};
row('time to ready, ms', 'readyMs', 0);
row(`gateway share of the first token, first ${FIRST} streams, p50 ms`, 'firstP50', 3);
row(`gateway share of the first token, streams ${FIRST + 1}–${REQUESTS}, p50 ms`, 'restP50', 3);
if (TRACE) {
  row('optimizations after ready', 'optimized', 0);
  row('deoptimizations after ready', 'deopts', 0);
}
out(`warm-up duration (its log line), median ms: ${m('on', 'warmupMs').toFixed(0)}\n`);
rmSync(dir, { recursive: true, force: true });
upstream.close();
