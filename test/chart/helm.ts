// Helpers of the chart tier: run helm (built by the cluster harness) and promtool, render the chart.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { binaries, clusterInfo } from '../cluster/harness.ts';

const run = promisify(execFile);
export const CHART = join(import.meta.dirname, '..', '..', 'charts', 'gpugate');
export const MONITORING_APIS = [
  'monitoring.coreos.com/v1/ServiceMonitor',
  'monitoring.coreos.com/v1/PrometheusRule',
];

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  [k: string]: unknown;
}

/** Runs helm against the harness cluster; rejects with helm's stderr. */
export async function helm(args: string[]): Promise<string> {
  try {
    const { stdout } = await run(binaries().helm, args, {
      env: {
        ...process.env,
        KUBECONFIG: clusterInfo().kubeconfig,
        HELM_CACHE_HOME: '/tmp/gpugate-helm-cache',
      },
      maxBuffer: 64 * 1024 * 1024,
    });
    return stdout;
  } catch (err) {
    throw new Error(`helm ${args.join(' ')}: ${(err as { stderr?: string }).stderr ?? String(err)}`, {
      cause: err,
    });
  }
}

export async function renderChart(opts: {
  namespace: string;
  values?: string[];
  set?: string[];
  monitoring?: boolean;
  includeCrds?: boolean;
}): Promise<{ text: string; objects: K8sObject[] }> {
  const args = [
    'template',
    'gpugate',
    CHART,
    '-n',
    opts.namespace,
    '--kube-version',
    clusterInfo().kubernetesVersion,
  ];
  for (const f of opts.values ?? []) args.push('-f', f);
  for (const s of opts.set ?? []) args.push('--set', s);
  if (opts.monitoring) for (const a of MONITORING_APIS) args.push('--api-versions', a);
  if (opts.includeCrds) args.push('--include-crds');
  const text = await helm(args);
  const objects = parseAllDocuments(text)
    .map((d) => d.toJSON() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null);
  return { text, objects };
}

/** promtool from the Debian package `prometheus`; `make chart-tools` installs it. */
export function promtoolPath(): string | null {
  for (const p of ['/usr/bin/promtool', '/usr/local/bin/promtool']) if (existsSync(p)) return p;
  return null;
}

export async function promtool(args: string[], cwd?: string): Promise<string> {
  const bin = promtoolPath();
  if (!bin) throw new Error('promtool is missing: run `make chart-tools` (apt-get install prometheus)');
  try {
    const { stdout, stderr } = await run(bin, args, { cwd });
    return stdout + stderr;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    throw new Error(`promtool ${args.join(' ')}:\n${e.stdout ?? ''}${e.stderr ?? ''}`, { cause: err });
  }
}
