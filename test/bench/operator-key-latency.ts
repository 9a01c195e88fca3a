// Time from `kubectl apply` of a new ApiKey (no secretRef) to a data plane accepting the key: the operator
// sees the ApiKey, creates the key Secret, sees the Secret, compiles, pushes; the data plane swaps.
//
//   make cluster-up CLUSTER_NAME=bench
//   tsx test/bench/operator-key-latency.ts --kubeconfig ~/.cache/gpugate/clusters/bench/kubeconfig \
//     [--trials 50] [--backends 10] [--tenants 100] [--keys 1000]
//
// The preload (backends with static endpoints, tenants, keys with operator-generated Secrets) is created
// first and the operator waits until all of it is in the snapshot; then each trial applies one key and
// polls the data plane every 5 ms with it. The operator and the data plane are child processes; the
// data plane forwards to a GPU simulator on loopback.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { request } from 'undici';
import { runKubectl, type ClusterInfo } from '../cluster/cluster.ts';
import { startSimulator } from '../fixtures/gpusim/index.ts';
import { root, startDataPlaneProcess, startProcess } from '../fixtures/processes.ts';

const { values } = parseArgs({
  options: {
    kubeconfig: { type: 'string' },
    trials: { type: 'string', default: '50' },
    backends: { type: 'string', default: '10' },
    tenants: { type: 'string', default: '100' },
    keys: { type: 'string', default: '1000' },
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
const TOKEN = 'bench-push-token';
const MODEL = 'sim-llama-8b';
const [trials, nBackends, nTenants, nKeys] = [
  values.trials,
  values.backends,
  values.tenants,
  values.keys,
].map(Number) as [number, number, number, number];

async function status(url: string, key: string): Promise<number> {
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 }),
  });
  await res.body.dump();
  return res.statusCode;
}

const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil((p / 100) * xs.length) - 1)]!;

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
  let t = Date.now();
  for (let i = 0; i < docs.length; i += 500)
    await kubectl(['apply', '-n', ns, '-f', '-'], docs.slice(i, i + 500).join('\n'));
  console.log(
    `preload applied: ${nBackends} backends, ${nTenants} tenants, ${nKeys} keys in ${Date.now() - t} ms`,
  );

  const dp = await startDataPlaneProcess({ token: TOKEN });
  const op = startProcess(
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
    { KUBECONFIG: kubeconfig, LOG_LEVEL: 'warn' },
  );
  t = Date.now();
  // Wait until every preloaded key is in a pushed snapshot: the last key is accepted.
  const lastSecret = `k${nKeys - 1}-gpugate-key`;
  for (;;) {
    try {
      const s = JSON.parse(await kubectl(['get', 'secret', lastSecret, '-n', ns, '-o', 'json'])) as {
        data: { key: string };
      };
      const lastKey = Buffer.from(s.data.key, 'base64').toString('utf8');
      if ((await status(dp.url, lastKey)) === 200) break;
    } catch {
      /* not yet */
    }
    if (op.child.exitCode !== null) throw new Error('operator exited');
    await new Promise((r) => setTimeout(r, 250));
  }
  console.log(
    `operator converged on the preload (key Secrets generated, snapshot pushed) in ${Date.now() - t} ms`,
  );

  const latencies: number[] = [];
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
    let key = '';
    for (;;) {
      if (!key) {
        try {
          const s = JSON.parse(
            await kubectl(['get', 'secret', `${name}-gpugate-key`, '-n', ns, '-o', 'json']),
          ) as { data: { key: string } };
          key = Buffer.from(s.data.key, 'base64').toString('utf8');
        } catch {
          await new Promise((r) => setTimeout(r, 5));
          continue;
        }
      }
      if ((await status(dp.url, key)) === 200) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    latencies.push(Date.now() - started);
  }
  console.log(
    `apply → accepted over ${trials} trials: p50 ${pct(latencies, 50)} ms, p90 ${pct(latencies, 90)} ms, p99 ${pct(latencies, 99)} ms, max ${Math.max(...latencies)} ms`,
  );
  op.child.kill('SIGTERM');
  dp.child.kill('SIGTERM');
  await sim.close();
  await kubectl(['delete', 'namespace', ns, '--wait=false']);
}

await main();
