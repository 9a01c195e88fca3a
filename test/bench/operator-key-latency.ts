// The operator at scale on the real API server: time from `kubectl apply` of a new ApiKey (no secretRef) to a
// data plane accepting the key (the operator sees the ApiKey, creates the key Secret, sees the Secret,
// compiles, pushes; the data plane swaps), plus what the issue asks beside it: preload convergence, full
// snapshot compile time, snapshot size, data-plane heap, and failed requests of a load running through
// config changes applied through the API server and pushed by the operator.
//
//   make cluster-up CLUSTER_NAME=bench
//   tsx test/bench/operator-key-latency.ts --kubeconfig ~/.cache/gpugate/clusters/bench/kubeconfig \
//     [--trials 100] [--backends 100] [--tenants 1000] [--keys 10000] [--swaps 20] [--trace] [--log-dir DIR]
//     [--during-catch-up]
//
// The preload (backends with static endpoints, tenants, keys with operator-generated Secrets) is created
// first with `kubectl create` and the operator converges on it; then each trial applies one key with
// `kubectl apply`, reads the generated Secret through the API (not a kubectl process per poll) and polls the
// data plane every 5 ms with the key. `--trace` runs the operator at debug level and prints, for every trial
// over 1 s, its timestamped trail (watch event, enqueued, reconciled, compiled, push started, pushed) and the
// data plane's swaps. Trials start once every ApiKey is Ready, or with --during-catch-up as soon as every
// preloaded key is in the data plane's snapshot (status writes of the preload may still be queued). The operator and the data plane are child processes; the data plane forwards to a GPU
// simulator on loopback.
import { mkdirSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { Agent, Pool, request } from 'undici';
import { KubeClient, paths, type KubeObject } from '../../operator/kube/client.ts';
import { compileSnapshot } from '../../operator/snapshot/compile.ts';
import type { ApiKey, GpuBackend, Tenant } from '../../operator/api/v1alpha1/index.ts';
import { runKubectl, type ClusterInfo } from '../cluster/cluster.ts';
import { startSimulator } from '../fixtures/gpusim/index.ts';
import { root, startDataPlaneProcess, startProcess, type Proc } from '../fixtures/processes.ts';

const { values } = parseArgs({
  options: {
    kubeconfig: { type: 'string' },
    trials: { type: 'string', default: '100' },
    backends: { type: 'string', default: '10' },
    tenants: { type: 'string', default: '100' },
    keys: { type: 'string', default: '1000' },
    swaps: { type: 'string', default: '20' },
    connections: { type: 'string', default: '8' },
    trace: { type: 'boolean', default: false },
    'during-catch-up': { type: 'boolean', default: false },
    'log-dir': { type: 'string' },
  },
});
const kubeconfig = resolve(values.kubeconfig ?? process.env.KUBECONFIG ?? '');
const record = join(dirname(kubeconfig), 'cluster.json');
if (!existsSync(record)) {
  console.error(
    '--kubeconfig must be the kubeconfig of a `make cluster-up` cluster (cluster.json beside it)',
  );
  process.exit(2);
}
const info = JSON.parse(readFileSync(record, 'utf8')) as ClusterInfo;
const kubectl = (args: string[], input?: string) => runKubectl(info.kubectl, kubeconfig, args, input);
const kc = new KubeConfig();
kc.loadFromFile(kubeconfig);
const api = new KubeClient(kc);
const TOKEN = 'bench-push-token';
const MODEL = 'sim-llama-8b';
const count = (flag: string, raw: string | undefined, min: number): number => {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) {
    console.error(`--${flag} must be an integer of at least ${min}, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return n;
};
const trials = count('trials', values.trials, 1);
const nBackends = count('backends', values.backends, 1);
const nTenants = count('tenants', values.tenants, 1);
const nKeys = count('keys', values.keys, 1);
const nSwaps = count('swaps', values.swaps, 0);
const connections = count('connections', values.connections, 1);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function chat(url: string, key: string, dispatcher?: Agent): Promise<number> {
  const res = await request(`${url}/v1/chat/completions`, {
    ...(dispatcher ? { dispatcher } : {}),
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 }),
  });
  await res.body.dump();
  return res.statusCode;
}

async function secretKey(ns: string, name: string): Promise<string | null> {
  try {
    const s = await api.get<KubeObject & { data?: { key?: string } }>(paths.core('secrets', ns, name));
    return s.data?.key ? Buffer.from(s.data.key, 'base64').toString('utf8') : null;
  } catch {
    return null;
  }
}

const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil((p / 100) * xs.length) - 1)]!;
const median = (xs: number[]) => pct(xs, 50);

interface LogLine {
  time: number;
  msg: string;
  [k: string]: unknown;
}
function logLines(p: Proc): LogLine[] {
  const out: LogLine[] = [];
  for (const l of p.log().split('\n')) {
    if (!l.startsWith('{')) continue;
    try {
      out.push(JSON.parse(l) as LogLine);
    } catch {
      /* partial line */
    }
  }
  return out;
}

/** A trial's trail: operator lines about its key or about compiles and pushes, and data-plane swaps. */
function trail(op: Proc, dp: Proc, name: string, from: number, to: number): string {
  const about = (l: LogLine) =>
    JSON.stringify(l).includes(name) ||
    [
      'compiled',
      'push started',
      'pushed',
      'push failed',
      'became leader',
      'stopped leading',
      'lease renewal failed',
      'watch stopped; restarting',
    ].includes(l.msg);
  const lines = [
    ...logLines(op)
      .filter((l) => l.time >= from && l.time <= to && about(l))
      .map((l) => ({ l, who: 'operator' })),
    ...logLines(dp)
      .filter((l) => l.time >= from && l.time <= to && l.msg === 'snapshot applied')
      .map((l) => ({ l, who: 'dataplane' })),
  ].sort((a, b) => a.l.time - b.l.time);
  return lines
    .map(({ l, who }) => {
      const { time, msg, level: _l, pid: _p, hostname: _h, name: _n, ...rest } = l;
      return `  +${String(time - from).padStart(6)} ms ${who} ${msg} ${JSON.stringify(rest)}`;
    })
    .join('\n');
}

const procs: { op?: Proc; dp?: Proc } = {};

async function main(): Promise<void> {
  await kubectl(['apply', '--server-side', '--force-conflicts', '-f', join(root, 'crds')]);
  const ns = `bench-${Date.now().toString(36)}`;
  await kubectl(['create', 'namespace', ns]);
  await kubectl(['create', 'secret', 'generic', 'push-token', '-n', ns, `--from-literal=token=${TOKEN}`]);
  const sim = await startSimulator({
    host: '127.0.0.1',
    port: 0,
    name: 'sim',
    models: [MODEL],
    decodeMsPerToken: 0,
  });
  const docs: string[] = [];
  for (let i = 0; i < nBackends; i++)
    docs.push(
      JSON.stringify({
        apiVersion: 'gpugate.io/v1alpha1',
        kind: 'GpuBackend',
        metadata: { name: `b${i}` },
        spec: { models: i === 0 ? [MODEL] : [`m${i}`], endpoints: [{ url: sim.url }] },
      }),
    );
  for (let i = 0; i < nTenants; i++)
    docs.push(
      JSON.stringify({
        apiVersion: 'gpugate.io/v1alpha1',
        kind: 'Tenant',
        metadata: { name: `t${i}` },
        spec: {},
      }),
    );
  for (let i = 0; i < nKeys; i++)
    docs.push(
      JSON.stringify({
        apiVersion: 'gpugate.io/v1alpha1',
        kind: 'ApiKey',
        metadata: { name: `k${i}` },
        spec: { tenant: `t${i % nTenants}` },
      }),
    );
  const t = Date.now();
  for (let i = 0; i < docs.length; i += 500)
    await kubectl(['create', '-n', ns, '-f', '-'], docs.slice(i, i + 500).join('\n'));
  console.log(
    `preload created: ${nBackends} backends, ${nTenants} tenants, ${nKeys} keys in ${Date.now() - t} ms`,
  );

  const dp = (procs.dp = await startDataPlaneProcess({
    token: TOKEN,
    env: { NODE_OPTIONS: `--import ${join(root, 'test/bench/heap-probe.ts')}` },
  }));
  const op = (procs.op = startProcess(
    'operator/main.ts',
    [
      '--namespace',
      ns,
      '--lease-namespace',
      ns,
      '--push-token-secret',
      `${ns}/push-token`,
      '--listen',
      '127.0.0.1:0',
      '--dataplane-url',
      dp.adminUrl,
    ],
    { KUBECONFIG: kubeconfig, LOG_LEVEL: values.trace ? 'debug' : 'info' },
  ));
  const opStarted = Date.now();
  const operatorUrl = (await op.waitFor('operator listening', 600_000)).url as string;
  const synced = op.line('caches synced')!.time as number;
  // Converged: the data plane holds a snapshot with every preloaded key (the compiler leaves a key out until
  // its Secret exists), then every ApiKey's status says Ready.
  const deadline = Date.now() + 3600_000;
  let inSnapshot = 0;
  while (!inSnapshot) {
    const applied = logLines(dp).find((l) => l.msg === 'snapshot applied' && (l.keys as number) >= nKeys);
    if (applied) inSnapshot = applied.time;
    else if (op.child.exitCode !== null) throw new Error(`operator exited\n${op.log().slice(-3000)}`);
    else if (Date.now() > deadline) throw new Error('the preload did not converge within an hour');
    else await sleep(250);
  }
  let allReady = 0;
  while (!allReady && !values['during-catch-up']) {
    const list = await api.list<ApiKey & KubeObject>(paths.custom('apikeys', ns));
    const ready = list.items.filter((k) =>
      k.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'),
    ).length;
    if (ready >= nKeys) allReady = Date.now();
    else if (Date.now() > deadline) throw new Error(`only ${ready}/${nKeys} ApiKeys Ready after an hour`);
    else await sleep(2000);
  }
  const keysPerSecond = (ms: number) => ((nKeys * 1000) / ms).toFixed(1);
  console.log(
    `operator caches synced ${synced - opStarted} ms after start; every key in the data plane's snapshot after ` +
      `${inSnapshot - opStarted} ms (${keysPerSecond(inSnapshot - opStarted)} keys/s)` +
      (allReady
        ? `, every ApiKey Ready after ${allReady - opStarted} ms (${keysPerSecond(allReady - opStarted)} keys/s, status polled every 2 s)`
        : '; trials start now, while statuses may still be written (--during-catch-up)'),
  );

  const latencies: number[] = [];
  const slow: { name: string; ms: number; started: number; ended: number }[] = [];
  for (let i = 0; i < trials; i++) {
    const name = `trial-${i}`;
    const started = Date.now();
    await kubectl(
      ['apply', '-n', ns, '-f', '-'],
      JSON.stringify({
        apiVersion: 'gpugate.io/v1alpha1',
        kind: 'ApiKey',
        metadata: { name },
        spec: { tenant: 't0' },
      }),
    );
    // The data plane limits failed authentications per client address, so the poller tries the key once
    // per revision the data plane reports (a revision that refused it will not accept it later), each try
    // from a loopback address of its own.
    let key: string | null = null;
    let tried: string | null = null;
    for (;;) {
      if (Date.now() - started > 120_000) throw new Error(`${name}: not accepted within 120 s`);
      key ??= await secretKey(ns, `${name}-gpugate-key`);
      const now = key ? await revision(dp.adminUrl) : null;
      if (key && now !== tried) {
        tried = now;
        const from = new Agent({ localAddress: nextLoopbackAddress() });
        const code = await chat(dp.url, key, from);
        await from.close();
        if (code === 200) break;
      }
      await sleep(5);
    }
    const ms = Date.now() - started;
    latencies.push(ms);
    if (values.trace && ms > 1000) slow.push({ name, ms, started, ended: Date.now() });
  }
  console.log(
    `apply → accepted over ${trials} trials: p50 ${pct(latencies, 50)} ms, p90 ${pct(latencies, 90)} ms, ` +
      `p99 ${pct(latencies, 99)} ms, max ${Math.max(...latencies)} ms`,
  );
  if (slow.length > 0) await sleep(1000); // the children's last log lines
  for (const s of slow) console.log(`${s.name}: ${s.ms} ms\n${trail(op, dp, s.name, s.started, s.ended)}`);

  // Snapshot size (as pushed) and full compile time over the same objects, compiled in this process.
  const snapshotRes = await request(`${operatorUrl}/snapshot`, {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  const snapshotBytes = Buffer.byteLength(await snapshotRes.body.text());
  const [backends, tenants, apiKeys, secrets] = await Promise.all([
    api.list<GpuBackend & KubeObject>(paths.custom('gpubackends', ns)),
    api.list<Tenant & KubeObject>(paths.custom('tenants', ns)),
    api.list<ApiKey & KubeObject>(paths.custom('apikeys', ns)),
    api.list<KubeObject & { data?: Record<string, string> }>(paths.core('secrets', ns)),
  ]);
  const compileInput = {
    gpuBackends: backends.items,
    tenants: tenants.items,
    apiKeys: apiKeys.items,
    secrets: secrets.items.map((s) => ({
      namespace: ns,
      name: s.metadata!.name!,
      data: Object.fromEntries(
        Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]),
      ),
    })),
    settings: { replicas: 1 },
    now: new Date(),
  };
  const compileMs: number[] = [];
  for (let i = 0; i < 5; i++) {
    const s = performance.now();
    compileSnapshot(compileInput);
    compileMs.push(performance.now() - s);
  }
  const heap = await dataPlaneHeap(dp);
  console.log(
    `snapshot: ${apiKeys.items.length} keys, ${(snapshotBytes / 1024).toFixed(0)} KiB as JSON; full compile ` +
      `(compileSnapshot, median of 5 in the bench process) ${median(compileMs).toFixed(0)} ms; data-plane heap ` +
      `used after GC ${(heap.heapUsed / 2 ** 20).toFixed(1)} MiB (RSS ${(heap.rss / 2 ** 20).toFixed(0)} MiB)`,
  );

  if (nSwaps > 0) await swaps(ns, dp.url, dp.adminUrl);

  await sim.close();
  await kubectl(['delete', 'namespace', ns, '--wait=false']);
}

let addresses = 0;
/** 127.1.0.2, 127.1.0.3, ...: a fresh client address for each key try. */
const nextLoopbackAddress = () => {
  const n = addresses++;
  return `127.${1 + Math.floor(n / 62_500)}.${Math.floor(n / 250) % 250}.${2 + (n % 250)}`;
};

const revision = async (adminUrl: string) =>
  ((await (await request(`${adminUrl}/readyz`)).body.json()) as { revision?: string }).revision ?? null;

/** The data plane's heap after a full GC, from test/bench/heap-probe.ts (SIGUSR2 → one "heap" line). */
async function dataPlaneHeap(dp: Proc): Promise<{ heapUsed: number; rss: number }> {
  const before = logLines(dp).filter((l) => l.msg === 'heap').length;
  dp.child.kill('SIGUSR2');
  for (let i = 0; i < 200; i++) {
    const lines = logLines(dp).filter((l) => l.msg === 'heap');
    if (lines.length > before) return lines.at(-1) as unknown as { heapUsed: number; rss: number };
    await sleep(50);
  }
  throw new Error('the data plane printed no heap line within 10 s (is heap-probe.ts loaded?)');
}

/**
 * A closed-loop load (`connections` loops, one key of tenant t0 on backend b0) runs while `nSwaps` config
 * changes go through the API server: b0's endpoint weight is patched, the operator compiles and pushes, and
 * the next change is applied once the data plane runs the new revision. Every answer but a 200 and every
 * client error counts as failed.
 */
async function swaps(ns: string, url: string, adminUrl: string): Promise<void> {
  const key = await secretKey(ns, 'k0-gpugate-key');
  if (!key) throw new Error('no key Secret k0-gpugate-key');
  const pool = new Pool(url, { connections });
  let stop = false;
  let ok = 0;
  const failures = new Map<string, number>();
  const body = JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 });
  const load = Promise.all(
    Array.from({ length: connections }, async () => {
      while (!stop) {
        try {
          const res = await pool.request({
            path: '/v1/chat/completions',
            method: 'POST',
            headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
            body,
          });
          await res.body.dump();
          if (res.statusCode === 200) ok++;
          else failures.set(String(res.statusCode), (failures.get(String(res.statusCode)) ?? 0) + 1);
        } catch (err) {
          const code = (err as { code?: string }).code ?? (err as Error).message;
          failures.set(code, (failures.get(code) ?? 0) + 1);
        }
      }
    }),
  );
  const swapMs: number[] = [];
  let applied = 0;
  const started = Date.now();
  for (let i = 1; i <= nSwaps; i++) {
    const before = await revision(adminUrl);
    const s = Date.now();
    await kubectl([
      'patch',
      'gpubackend',
      'b0',
      '-n',
      ns,
      '--type=json',
      `-p=[{"op":"replace","path":"/spec/endpoints/0/weight","value":${i + 1}}]`,
    ]);
    while ((await revision(adminUrl)) === before) {
      if (Date.now() - s > 60_000) throw new Error(`swap ${i}: the data plane kept ${before} for 60 s`);
      await sleep(5);
    }
    swapMs.push(Date.now() - s);
    applied++;
  }
  stop = true;
  await load;
  await pool.close();
  const failed = [...failures.values()].reduce((a, b) => a + b, 0);
  console.log(
    `load through ${applied} snapshot swaps (${connections} connections, ${((Date.now() - started) / 1000).toFixed(1)} s): ` +
      `${ok} requests answered 200, ${failed} failed${failed ? ` ${JSON.stringify(Object.fromEntries(failures))}` : ''}; ` +
      `patch → swapped p50 ${pct(swapMs, 50)} ms, max ${Math.max(...swapMs)} ms`,
  );
}

try {
  await main();
} finally {
  if (values['log-dir']) {
    mkdirSync(values['log-dir'], { recursive: true });
    writeFileSync(join(values['log-dir'], 'operator.log'), procs.op?.log() ?? '');
    writeFileSync(join(values['log-dir'], 'dataplane.log'), procs.dp?.log() ?? '');
  }
  await procs.op?.kill();
  await procs.dp?.kill();
}
