// Helpers of the operator suites: the operator as a child process (node operator/main.ts; the data plane's
// is in test/fixtures/processes.ts), the operator's RBAC bound to its own service account, and small
// kubectl wrappers.
import { resolve } from 'node:path';
import type { Condition } from '../../operator/api/v1alpha1/common.ts';
import { request } from 'undici';
import { rbacWithBindings } from '../../operator/rbac/rules.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import {
  root,
  startDataPlaneProcess,
  startProcess,
  type DataPlaneProcess,
  type Proc,
} from '../fixtures/processes.ts';
import { kubeconfigForServiceAccount, kubectl, newNamespace, waitEstablished } from './harness.ts';

/** Binds the operator's rules (operator/rbac/rules.ts) to `<ns>/gpugate-operator`; returns its kubeconfig. */
export async function operatorServiceAccount(ns: string): Promise<string> {
  const kubeconfig = await kubeconfigForServiceAccount(ns, 'gpugate-operator');
  const objects = rbacWithBindings(ns, 'gpugate-operator', `gpugate-operator-${ns}`);
  await kubectl(['apply', '-f', '-'], { input: objects.map((o) => JSON.stringify(o)).join('\n') });
  return kubeconfig;
}

export async function installCrds(): Promise<void> {
  await kubectl(['apply', '--server-side', '--force-conflicts', '-f', resolve(root, 'crds')]);
  await waitEstablished(['gpubackends.gpugate.io', 'tenants.gpugate.io', 'apikeys.gpugate.io']);
}

/** The suites' GPU simulator: on loopback, serving one model at 1 ms a token. */
export function startSim(model: string, name = 'sim'): Promise<Simulator> {
  return startSimulator({ host: '127.0.0.1', port: 0, name, models: [model], decodeMsPerToken: 1 });
}

/** A GpuBackend `sim` serving `model` from the static endpoint `url`, as YAML. */
export function simBackendYaml(model: string, url: string): string {
  return `
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: sim}
spec:
  models: [${model}]
  endpoints: [{url: "${url}"}]
`;
}

/**
 * A new namespace ready for an operator process: the CRDs installed, the push-token Secret holding
 * `token`, and the operator's service account; returns the namespace and that account's kubeconfig.
 */
export async function operatorNamespace(
  prefix: string,
  token: string,
): Promise<{ ns: string; kubeconfig: string }> {
  await installCrds();
  const ns = await newNamespace(prefix);
  const kubeconfig = await operatorServiceAccount(ns);
  await kubectl(['create', 'secret', 'generic', 'push-token', '-n', ns, `--from-literal=token=${token}`]);
  return { ns, kubeconfig };
}

export interface OperatorSuite {
  ns: string;
  /** The operator's service account's (operatorServiceAccount). */
  kubeconfig: string;
  sim: Simulator;
  dataPlane: DataPlaneProcess;
  /** `kubectl apply -n <ns>` of YAML. */
  apply(yaml: string): Promise<string>;
  /** Stops the data plane, then the simulator. */
  close(): Promise<void>;
}

/**
 * What an operator suite has before it starts its operator: an operatorNamespace, a simulator serving `model` (startSim) and a data-plane process
 * taking `token` (with `dataPlaneArgs`).
 */
export async function startOperatorSuite(o: {
  prefix: string;
  token: string;
  model: string;
  dataPlaneArgs?: string[];
}): Promise<OperatorSuite> {
  const { ns, kubeconfig } = await operatorNamespace(o.prefix, o.token);
  const sim = await startSim(o.model);
  let dataPlane: DataPlaneProcess;
  try {
    dataPlane = await startDataPlaneProcess({ token: o.token, args: o.dataPlaneArgs ?? [] });
  } catch (err) {
    await sim.close();
    throw err;
  }
  return {
    ns,
    kubeconfig,
    sim,
    dataPlane,
    apply: (yaml) => kubectl(['apply', '-n', ns, '-f', '-'], { input: yaml }),
    async close() {
      await dataPlane.kill();
      await sim.close();
    },
  };
}

export interface OperatorArgs {
  ns: string;
  kubeconfig: string;
  dataplaneUrls?: string[];
  identity?: string;
  leaseDurationMs?: number;
  extra?: string[];
  /** Extra environment (DATABASE_URL). */
  env?: Record<string, string>;
}

export async function startOperatorProcess(a: OperatorArgs): Promise<Proc & { url: string }> {
  const p = startProcess(
    'operator/main.ts',
    [
      '--namespace',
      a.ns,
      '--lease-namespace',
      a.ns,
      '--push-token-secret',
      `${a.ns}/push-token`,
      '--listen',
      '127.0.0.1:0',
      '--lease-duration-ms',
      String(a.leaseDurationMs ?? 2000),
      ...(a.identity ? ['--identity', a.identity] : []),
      ...(a.dataplaneUrls ?? []).flatMap((u) => ['--dataplane-url', u]),
      ...(a.extra ?? []),
    ],
    { KUBECONFIG: a.kubeconfig, ...a.env },
  );
  const listening = await p.waitFor('operator listening');
  return Object.assign(p, { url: listening.url as string });
}

export async function chatStatus(gatewayUrl: string, key: string, model: string): Promise<number> {
  const res = await request(`${gatewayUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
  });
  await res.body.dump();
  return res.statusCode;
}

export async function getJson<T = Record<string, unknown>>(args: string[]): Promise<T> {
  return JSON.parse(await kubectl([...args, '-o', 'json'])) as T;
}

export async function secretValue(ns: string, name: string, key: string): Promise<string> {
  const s = await getJson<{ data: Record<string, string> }>(['get', 'secret', name, '-n', ns]);
  return Buffer.from(s.data[key]!, 'base64').toString('utf8');
}

export function condition(obj: { status?: { conditions?: Condition[] } }, type: string) {
  return obj.status?.conditions?.find((c) => c.type === type);
}
