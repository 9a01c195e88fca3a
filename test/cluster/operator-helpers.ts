// Helpers of the operator suites: the operator as a child process (node operator/main.ts; the data plane's
// is in test/fixtures/processes.ts), the operator's RBAC bound to its own service account, and small
// kubectl wrappers.
import { resolve } from 'node:path';
import { request } from 'undici';
import { rbacWithBindings } from '../../operator/rbac/rules.ts';
import { root, startProcess, type Proc } from '../fixtures/processes.ts';
import { kubeconfigForServiceAccount, kubectl } from './harness.ts';

/** Binds the operator's rules (operator/rbac/rules.ts) to `<ns>/gpugate-operator`; returns its kubeconfig. */
export async function operatorServiceAccount(ns: string): Promise<string> {
  const kubeconfig = await kubeconfigForServiceAccount(ns, 'gpugate-operator');
  const objects = rbacWithBindings(ns, 'gpugate-operator', `gpugate-operator-${ns}`);
  await kubectl(['apply', '-f', '-'], { input: objects.map((o) => JSON.stringify(o)).join('\n') });
  return kubeconfig;
}

export async function installCrds(): Promise<void> {
  await kubectl(['apply', '--server-side', '--force-conflicts', '-f', resolve(root, 'crds')]);
  for (const plural of ['gpubackends', 'tenants', 'apikeys']) {
    await kubectl(['wait', '--for=condition=Established', `crd/${plural}.gpugate.io`, '--timeout=30s']);
  }
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

export function condition(
  obj: { status?: { conditions?: { type: string; status: string; reason: string; message: string }[] } },
  type: string,
) {
  return obj.status?.conditions?.find((c) => c.type === type);
}
