// The cluster harness: what a test suite of a Kubernetes tier (cluster, operator, chart, CRD validation)
// imports to use the real control plane that test/cluster/global-setup.ts starts once per `vitest run`.
//
//   import { kubectl, newNamespace, kubeconfigPath } from '../cluster/harness.ts';
//
//   const ns = await newNamespace('operator');        // fresh namespace per suite (in beforeAll)
//   await kubectl(['apply', '-n', ns, '-f', '-'], { input: yaml });
//   const pods = JSON.parse(await kubectl(['get', 'pods', '-n', ns, '-o', 'json']));
//
//   // A client (@kubernetes/client-node 2):
//   const kc = new KubeConfig();
//   kc.loadFromFile(kubeconfigPath());                 // admin (system:masters)
//   const core = kc.makeApiClient(CoreV1Api);
//
//   // Acting as a workload (the operator): a real token from the TokenRequest API, so RBAC applies.
//   kc.loadFromFile(await kubeconfigForServiceAccount(ns, 'gpugate-operator'));
//
// API:
//   clusterInfo()                 ClusterInfo: kubeconfig, server, kubernetesVersion, kubectl path, dir
//   kubeconfigPath()              the admin kubeconfig (client certificate in system:masters)
//   kubectl(args, {input})        runs the kubectl built with the server (same version); resolves stdout,
//                                 rejects with stderr on a non-zero exit; 60 s bound
//   newNamespace(prefix)          creates `<prefix>-<random>` and waits for its default service account
//   kubeconfigForServiceAccount(namespace, name)
//                                 creates the service account if absent and writes a kubeconfig holding a
//                                 1-hour token for it; returns the path
//   waitUntil(what, check, ms)    polls check() until it returns a value other than undefined/false
//   binaries()                    paths of every built binary (helm for the chart tier, kubectl, ...)
//
// Namespaces are not deleted: the whole cluster is thrown away when the run ends. A suite lives in a project
// with the global setup only if its file matches CLUSTER_TIERS in vitest.config.ts.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { inject } from 'vitest';
import { runKubectl, writeKubeconfig, type ClusterInfo } from './cluster.ts';

export { binaries } from './cluster.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    gpugateCluster: ClusterInfo;
  }
}

export type { ClusterInfo };

export function clusterInfo(): ClusterInfo {
  const info = inject('gpugateCluster');
  if (!info) {
    throw new Error(
      'no cluster was provided: cluster tests run in the "cluster" vitest project (see CLUSTER_TIERS in vitest.config.ts)',
    );
  }
  return info;
}

export function kubeconfigPath(): string {
  return clusterInfo().kubeconfig;
}

export function kubectl(
  args: string[],
  options: { input?: string; kubeconfig?: string } = {},
): Promise<string> {
  const info = clusterInfo();
  return runKubectl(info.kubectl, options.kubeconfig ?? info.kubeconfig, args, options.input);
}

/**
 * Waits until each CRD (full name, e.g. `tenants.gpugate.io`) is Established. Polls instead of
 * `kubectl wait --for=condition=Established`, which fails at once with ".status.conditions accessor
 * error: <nil>" when it reads a CRD created a moment ago that has no status yet.
 */
export async function waitEstablished(names: string[], timeoutMs = 60_000): Promise<void> {
  for (const name of names) {
    await waitUntil(
      `CRD ${name} Established`,
      async () => {
        const status = await kubectl([
          'get',
          `crd/${name}`,
          '-o',
          'jsonpath={.status.conditions[?(@.type=="Established")].status}',
        ]);
        return status.trim() === 'True' || undefined;
      },
      timeoutMs,
    );
  }
}

export async function newNamespace(prefix: string): Promise<string> {
  const name = `${prefix}-${randomBytes(3).toString('hex')}`;
  await kubectl(['create', 'namespace', name]);
  // Pods are refused until the controller manager has made the namespace's default service account.
  await waitUntil(`service account default in ${name}`, async () => {
    const out = await kubectl(['get', 'serviceaccounts', '-n', name, '-o', 'name']);
    return out.split('\n').includes('serviceaccount/default') || undefined;
  });
  return name;
}

export async function kubeconfigForServiceAccount(namespace: string, name: string): Promise<string> {
  const info = clusterInfo();
  const existing = await kubectl(['get', 'serviceaccounts', '-n', namespace, '-o', 'name']);
  if (!existing.split('\n').includes(`serviceaccount/${name}`)) {
    await kubectl(['create', 'serviceaccount', name, '-n', namespace]);
  }
  const token = (await kubectl(['create', 'token', name, '-n', namespace, '--duration=1h'])).trim();
  const dir = join(info.dir, 'serviceaccounts');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${namespace}.${name}.kubeconfig`);
  const ca = join(info.dir, 'pki', 'ca.crt');
  if (!existsSync(ca)) throw new Error(`the cluster's CA is missing at ${ca}`);
  writeKubeconfig(path, info.server, ca, { token }, `${namespace}.${name}`);
  return path;
}

export async function waitUntil<T>(
  what: string,
  check: () => Promise<T | undefined | false>,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const cause = lastError instanceof Error ? `; last error: ${lastError.message}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${cause}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}
