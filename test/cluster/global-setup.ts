// Vitest global setup of the "cluster" project (see vitest.config.ts): starts one control plane for the whole
// run, hands it to suites through provide/inject (read it with harness.ts), and stops it afterwards.
//
// GPUGATE_KUBECONFIG=<a run folder's kubeconfig> reuses a cluster started by `make cluster-up` instead, which
// saves its start-up time while iterating on a suite; that cluster is left running.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { killClusterNow, startCluster, stopCluster, type ClusterInfo } from './cluster.ts';
// For the ProvidedContext declaration only: the harness itself runs in the test workers.
import type {} from './harness.ts';

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const external = process.env.GPUGATE_KUBECONFIG;
  if (external) {
    const record = join(dirname(external), 'cluster.json');
    if (!existsSync(record)) throw new Error(`GPUGATE_KUBECONFIG=${external}: no cluster.json beside it`);
    project.provide('gpugateCluster', JSON.parse(readFileSync(record, 'utf8')) as ClusterInfo);
    return async () => {};
  }

  const started = Date.now();
  const info = await startCluster({
    name: `test-${process.pid}`,
    log: (line) => console.log(`[cluster] ${line}`),
  });
  console.log(`[cluster] started in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  // A run that dies without teardown (an uncaught error, process.exit) still takes its cluster with it.
  const onExit = (): void => killClusterNow(info);
  process.once('exit', onExit);
  project.provide('gpugateCluster', info);

  return async () => {
    process.off('exit', onExit);
    await stopCluster(info.dir);
  };
}
