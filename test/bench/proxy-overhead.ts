// Proxy overhead benchmark (not a test). One backend (nginx, one worker, a fixed small JSON
// completion) behind: nothing (direct), nginx (one worker), haproxy (one thread), gpugate with every
// feature on, and two reference proxies written for the benchmark (bare Fastify + undici.request,
// raw node:http + undici.stream). Same client for all: wrk (one thread, keep-alive) for maximum
// throughput, interleaved over several rounds (median kept) since the machine is shared; then a
// fixed-rate run at half of gpugate's own maximum for added p50/p99 latency against direct: wrk with
// a Lua delay() per request (exponential gaps, mean C × 1000 / rate ms per connection over C
// connections), so the offered rate does not depend on response times as long as every response
// comes back within a gap (the gaps are tens of milliseconds; the latencies measured, about one).
//
//   node test/bench/proxy-overhead.ts [--seconds 8] [--rounds 3] [--connections 64] [--latency-seconds 10]
//                                     [--backend nginx|node] [--node-flags='<flags>'] [--client wrk|autocannon]
//
// Needs wrk, nginx and haproxy on PATH (Debian: apt-get install wrk nginx-light haproxy); a missing
// proxy is skipped and said so.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { DATAPLANE_NODE_FLAGS } from '../../dataplane/node-flags.ts';
import { processTreeCpu, waitForPort } from './load.ts';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '8' },
    rounds: { type: 'string', default: '3' },
    connections: { type: 'string', default: '64' },
    'latency-seconds': { type: 'string', default: '10' },
    // nginx: `return 200` of a fixed body (about 5 µs per request); node: test/bench/backend-node.ts,
    // the same body from node:http (a model server's HTTP layer in a GC'd runtime).
    backend: { type: 'string', default: 'nginx' },
    // The gateway's Node.js flags: the data plane's own (dataplane/node-flags.ts) unless given ('' for none).
    'node-flags': { type: 'string' },
    // The load generator of the maximum-throughput rounds: wrk (C, about 5 µs of CPU per request here) or
    // autocannon (Node.js, the client of Fastify's own benchmarks, several times wrk's CPU per request).
    // How much of the two cores the client takes decides how far nginx gets ahead of the Node.js proxies,
    // so both are offered (docs/benchmarks.md, "Which client"). The fixed-rate rounds always use wrk.
    client: { type: 'string', default: 'wrk' },
  },
});
if (values.client !== 'wrk' && values.client !== 'autocannon') {
  throw new Error(`--client must be wrk or autocannon, got ${JSON.stringify(values.client)}`);
}
if (values.backend !== 'nginx' && values.backend !== 'node') {
  throw new Error(`--backend must be nginx or node, got ${JSON.stringify(values.backend)}`);
}
const SECONDS = Number(values.seconds);
const ROUNDS = Number(values.rounds);
const CONNECTIONS = Number(values.connections);
const LATENCY_SECONDS = Number(values['latency-seconds']);

const root = resolve(import.meta.dirname, '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'gpugate-bench-'));
const children: ChildProcess[] = [];
const PORTS = { backend: 28001, nginx: 28002, haproxy: 28003, gpugate: 28004, fastify: 28005, node: 28006 };
const BODY = JSON.stringify({
  model: 'bench-model',
  messages: [{ role: 'user', content: 'Say hello in one word.' }],
  max_tokens: 16,
});
const COMPLETION = JSON.stringify({
  id: 'cmpl-bench',
  object: 'chat.completion',
  model: 'bench-model',
  choices: [{ index: 0, message: { role: 'assistant', content: 'Hello' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 14, completion_tokens: 2, total_tokens: 16 },
});

function has(bin: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;
}

function start(name: string, cmd: string, args: string[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: root });
  child.stderr?.on('data', (d: Buffer) => {
    const line = d.toString().trim();
    if (line && !line.includes('FSTDEP')) process.stderr.write(`[${name}] ${line}\n`);
  });
  child.stdout?.resume();
  children.push(child);
  return child;
}

function cleanup(): void {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

interface Target {
  name: string;
  port: number;
  pid: number | null;
  /** CPU µs used so far by the proxy's process and its children (nginx's worker). */
  cpu?: () => number;
}

function writeScript(key: string, meanGapMs: number | null): string {
  const lua = join(dir, meanGapMs === null ? 'post.lua' : 'paced.lua');
  const pacing =
    meanGapMs === null ? '' : `function delay()\n  return -${meanGapMs} * math.log(1 - math.random())\nend\n`;
  writeFileSync(
    lua,
    `wrk.method = "POST"\nwrk.body = '${BODY}'\nwrk.headers["content-type"] = "application/json"\nwrk.headers["authorization"] = "Bearer ${key}"\n${pacing}`,
  );
  return lua;
}

const AUTOCANNON = resolve(import.meta.dirname, '..', '..', 'node_modules', 'autocannon', 'autocannon.js');

/** One closed-loop round with autocannon (one process, no workers, keep-alive, pipelining 1). */
function autocannon(port: number, seconds: number, key: string): WrkResult {
  const run = spawnSync(
    process.execPath,
    [
      AUTOCANNON,
      '--json',
      '-c',
      String(CONNECTIONS),
      '-d',
      String(seconds),
      '-m',
      'POST',
      '-H',
      'content-type=application/json',
      '-H',
      `authorization=Bearer ${key}`,
      '-b',
      BODY,
      `http://127.0.0.1:${port}/v1/chat/completions`,
    ],
    { encoding: 'utf8', maxBuffer: 16 << 20 },
  );
  const json = run.stdout.trim().split('\n').at(-1) ?? '';
  if (!json.startsWith('{')) throw new Error(`autocannon printed no result: ${run.stderr.slice(-500)}`);
  const r = JSON.parse(json) as {
    duration: number;
    errors: number;
    timeouts: number;
    non2xx: number;
    requests: { total: number };
    latency: { p50: number; p99: number };
  };
  return {
    rps: r.requests.total / r.duration,
    requests: r.requests.total,
    errors: r.errors + r.timeouts + r.non2xx,
    p50Ms: r.latency.p50,
    p99Ms: r.latency.p99,
  };
}

interface WrkResult {
  rps: number;
  requests: number;
  errors: number;
  p50Ms: number;
  p99Ms: number;
}

function toMs(value: string, unit: string): number {
  const n = Number(value);
  return unit === 'us' ? n / 1000 : unit === 's' ? n * 1000 : unit === 'm' ? n * 60_000 : n;
}

function wrk(
  port: number,
  seconds: number,
  key: string,
  opts: { connections?: number; meanGapMs?: number } = {},
): WrkResult {
  const lua = writeScript(key, opts.meanGapMs ?? null);
  const out = spawnSync(
    'wrk',
    [
      '-t1',
      `-c${opts.connections ?? CONNECTIONS}`,
      `-d${seconds}s`,
      '--latency',
      '-s',
      lua,
      `http://127.0.0.1:${port}/v1/chat/completions`,
    ],
    { encoding: 'utf8' },
  ).stdout;
  const pct = (p: string): number => {
    const m = new RegExp(`\\s${p}%\\s+([\\d.]+)(us|ms|s|m)`).exec(out);
    return m ? toMs(m[1] as string, m[2] as string) : NaN;
  };
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  const sockErr = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN),
    requests: Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN),
    errors: non2xx + (sockErr ? sockErr.slice(1).reduce((a, b) => a + Number(b), 0) : 0),
    p50Ms: pct('50'),
    p99Ms: pct('99'),
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

async function main(): Promise<void> {
  for (const bin of ['wrk', 'nginx']) {
    if (!has(bin)) throw new Error(`${bin} is required (Debian: apt-get install -y wrk nginx-light haproxy)`);
  }
  const node = process.execPath;
  // Backend: nginx, one worker, fixed completion, also /health for gpugate's active checks.
  writeFileSync(
    join(dir, 'backend.conf'),
    `worker_processes 1; daemon off; pid ${dir}/backend.pid; error_log ${dir}/backend.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:${PORTS.backend};
    location / { default_type application/json; return 200 '${COMPLETION}'; } } }
`,
  );
  const backend =
    values.backend === 'node'
      ? start('backend', node, ['test/bench/backend-node.ts', String(PORTS.backend), COMPLETION])
      : start('backend', 'nginx', ['-c', join(dir, 'backend.conf'), '-p', dir]);
  process.stdout.write(`backend: ${values.backend}\n`);
  const upstream = `http://127.0.0.1:${PORTS.backend}`;
  const targets: Target[] = [{ name: 'direct', port: PORTS.backend, pid: null }];

  writeFileSync(
    join(dir, 'proxy.conf'),
    `worker_processes 1; daemon off; pid ${dir}/proxy.pid; error_log ${dir}/proxy.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000;
  upstream backend { server 127.0.0.1:${PORTS.backend}; keepalive 256; }
  server { listen 127.0.0.1:${PORTS.nginx};
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } } }
`,
  );
  const nginx = start('nginx', 'nginx', ['-c', join(dir, 'proxy.conf'), '-p', dir]);
  targets.push({ name: 'nginx (1 worker)', port: PORTS.nginx, pid: nginx.pid ?? null });

  if (has('haproxy')) {
    writeFileSync(
      join(dir, 'haproxy.cfg'),
      `global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:${PORTS.haproxy}
  default_backend be
backend be
  http-reuse always
  server b1 127.0.0.1:${PORTS.backend}
`,
    );
    const haproxy = start('haproxy', 'haproxy', ['-f', join(dir, 'haproxy.cfg'), '-db']);
    targets.push({ name: 'haproxy (1 thread)', port: PORTS.haproxy, pid: haproxy.pid ?? null });
  } else {
    process.stdout.write('haproxy not found: skipped\n');
  }

  const keyFile = join(dir, 'key');
  const nodeFlags =
    values['node-flags'] === undefined
      ? DATAPLANE_NODE_FLAGS
      : values['node-flags'].split(' ').filter((f) => f !== '');
  const gpugate = start('gpugate', node, [
    ...nodeFlags,
    'test/bench/gpugate-runner.ts',
    String(PORTS.gpugate),
    upstream,
    keyFile,
  ]);
  targets.push({ name: 'gpugate (all features)', port: PORTS.gpugate, pid: gpugate.pid ?? null });
  const fastify = start('fastify-ref', node, [
    'test/bench/ref-fastify-request.ts',
    String(PORTS.fastify),
    upstream,
  ]);
  targets.push({ name: 'ref: Fastify + undici.request', port: PORTS.fastify, pid: fastify.pid ?? null });
  const raw = start('node-ref', node, ['test/bench/ref-node-stream.ts', String(PORTS.node), upstream]);
  targets.push({ name: 'ref: node:http + undici.stream', port: PORTS.node, pid: raw.pid ?? null });

  for (const p of Object.values(PORTS)) if (p !== PORTS.haproxy || has('haproxy')) await waitForPort(p);
  await new Promise((r) => setTimeout(r, 300));
  const key = readFileSync(keyFile, 'utf8');
  void backend;

  process.stdout.write(`warming up (${targets.length} targets)\n`);
  const load = values.client === 'autocannon' ? autocannon : wrk;
  for (const t of targets) load(t.port, 2, key);

  const results = new Map<string, { rps: number[]; cpuUs: number[]; errors: number }>();
  for (let round = 1; round <= ROUNDS; round++) {
    for (const t of targets) {
      if (t.pid) t.cpu ??= processTreeCpu(t.pid);
      const cpu0 = t.cpu?.() ?? 0;
      const r = load(t.port, SECONDS, key);
      const cpu1 = t.cpu?.() ?? 0;
      const entry = results.get(t.name) ?? { rps: [], cpuUs: [], errors: 0 };
      entry.rps.push(r.rps);
      if (t.pid) entry.cpuUs.push((cpu1 - cpu0) / r.requests);
      entry.errors += r.errors;
      results.set(t.name, entry);
      process.stdout.write(
        `round ${round} ${t.name.padEnd(32)} ${r.rps.toFixed(0).padStart(7)} req/s  errors ${r.errors}\n`,
      );
    }
  }
  const rpsOf = (name: string) => median(results.get(name)?.rps ?? [NaN]);
  const nginxRps = rpsOf('nginx (1 worker)');
  const directRps = rpsOf('direct');
  const fastifyRps = rpsOf('ref: Fastify + undici.request');
  const rawRps = rpsOf('ref: node:http + undici.stream');
  const client = values.client === 'autocannon' ? `autocannon -c${CONNECTIONS}` : `wrk -t1 -c${CONNECTIONS}`;
  process.stdout.write(`\nMaximum throughput (${client}, ${SECONDS} s x ${ROUNDS} rounds, median)\n\n`);
  process.stdout.write(
    '| target | req/s | × direct | × nginx | × bare Fastify | × raw node | proxy CPU µs/req | errors |\n|---|---|---|---|---|---|---|---|\n',
  );
  for (const t of targets) {
    const r = results.get(t.name)!;
    const rps = median(r.rps);
    const cpu = r.cpuUs.length ? median(r.cpuUs).toFixed(0) : '–';
    process.stdout.write(
      `| ${t.name} | ${rps.toFixed(0)} | ${(rps / directRps).toFixed(2)} | ${(rps / nginxRps).toFixed(2)} | ${(rps / fastifyRps).toFixed(2)} | ${(rps / rawRps).toFixed(2)} | ${cpu} | ${r.errors} |\n`,
    );
  }

  const rate = Math.round(rpsOf('gpugate (all features)') / 2);
  const pacedConnections = 128;
  const meanGapMs = (pacedConnections * 1000) / rate;
  process.stdout.write(
    `\nFixed rate ${rate} req/s (half of gpugate's maximum): wrk, ${pacedConnections} connections, exponential gaps of mean ${meanGapMs.toFixed(1)} ms, ${LATENCY_SECONDS} s each, ${ROUNDS} rounds (median)\n\n`,
  );
  const lat = new Map<string, WrkResult[]>();
  for (let round = 1; round <= ROUNDS; round++) {
    for (const t of targets) {
      const r = wrk(t.port, LATENCY_SECONDS, key, { connections: pacedConnections, meanGapMs });
      lat.set(t.name, [...(lat.get(t.name) ?? []), r]);
    }
  }
  const med = (name: string, f: (r: WrkResult) => number) => median((lat.get(name) ?? []).map(f));
  const directP50 = med('direct', (r) => r.p50Ms);
  const directP99 = med('direct', (r) => r.p99Ms);
  process.stdout.write(
    '| target | p50 ms | p99 ms | added p50 ms | added p99 ms | p99 ms per round | achieved req/s | errors |\n|---|---|---|---|---|---|---|---|\n',
  );
  for (const t of targets) {
    const p50 = med(t.name, (r) => r.p50Ms);
    const p99 = med(t.name, (r) => r.p99Ms);
    const errors = (lat.get(t.name) ?? []).reduce((a, r) => a + r.errors, 0);
    // Every round's p99, so a reader sees how far one round's tail moves on this host.
    const perRound = (lat.get(t.name) ?? []).map((r) => r.p99Ms.toFixed(2)).join(', ');
    process.stdout.write(
      `| ${t.name} | ${p50.toFixed(3)} | ${p99.toFixed(3)} | ${(p50 - directP50).toFixed(3)} | ${(p99 - directP99).toFixed(3)} | ${perRound} | ${med(t.name, (r) => r.rps).toFixed(0)} | ${errors} |\n`,
    );
  }
  process.stdout.write(`\nload average: ${readFileSync('/proc/loadavg', 'utf8').trim()}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${String(err)}\n`);
    process.exit(1);
  },
);
