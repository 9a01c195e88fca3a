// The chart installed into the harness cluster, driving a working path. kwok pods run no code, so the
// chart's own Deployments never serve anything; instead the operator runs from source (node
// operator/main.ts) with the environment and arguments of the chart's operator Deployment, authenticated
// as the chart's ServiceAccount (a TokenRequest token, so the chart's ClusterRole/Role are what it may do),
// and a data-plane process on loopback runs with the chart's data-plane environment (push token from the
// chart's generated Secret, DATABASE_URL from the Secret named in postgres.existingSecret). The operator
// finds that process through --dataplane-url; it also pushes to the kwok pods behind the chart's admin
// Service, which never answer. Then a Tenant and an ApiKey applied with kubectl end with a simulator
// completion for that key.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { DATAPLANE_NODE_FLAGS } from '../../dataplane/node-flags.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Simulator } from '../fixtures/gpusim/index.ts';
import { createTestDatabase, type TestDatabase } from '../fixtures/postgres.ts';
import { kubeconfigForServiceAccount, kubectl, newNamespace, waitUntil } from '../cluster/harness.ts';
import { condition, getJson, secretValue, simBackendYaml, startSim } from '../cluster/operator-helpers.ts';
import {
  startDataPlaneProcess,
  startProcess,
  type DataPlaneProcess,
  type Proc,
} from '../fixtures/processes.ts';
import { CHART, helm } from './helm.ts';

const MODEL = 'sim-chart-8b';

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    fieldRef?: { fieldPath: string };
    secretKeyRef?: { name: string; key: string };
  };
}
interface Container {
  name: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
}
interface Deployment {
  spec: { template: { spec: { serviceAccountName: string; containers: Container[] } } };
}

describe('the chart installed, with the operator from source as its service account', () => {
  let ns: string;
  let db: TestDatabase;
  let sim: Simulator;
  let dataPlane: DataPlaneProcess;
  let operator: Proc;

  /** A container's environment as the kubelet would resolve it (literal values, fieldRefs, Secrets). */
  const resolveEnv = async (c: Container, podName: string): Promise<Record<string, string>> => {
    const env: Record<string, string> = {};
    for (const e of c.env ?? []) {
      if (e.value !== undefined) env[e.name] = e.value;
      else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.namespace') env[e.name] = ns;
      else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.name') env[e.name] = podName;
      else if (e.valueFrom?.secretKeyRef) {
        env[e.name] = await secretValue(ns, e.valueFrom.secretKeyRef.name, e.valueFrom.secretKeyRef.key);
      } else throw new Error(`cannot resolve env ${e.name} of ${c.name}`);
    }
    return env;
  };
  const container = async (deployment: string) => {
    const d = await getJson<Deployment>(['get', 'deployment', deployment, '-n', ns]);
    return { sa: d.spec.template.spec.serviceAccountName, c: d.spec.template.spec.containers[0]! };
  };

  beforeAll(async () => {
    ns = await newNamespace('chart-e2e');
    db = await createTestDatabase();
    await kubectl(['create', 'secret', 'generic', 'gpugate-db', '-n', ns, `--from-literal=url=${db.url}`]);
    await helm([
      'install',
      'gpugate',
      CHART,
      '-n',
      ns,
      '--set',
      'dataplane.autoscaling.enabled=false',
      '--set',
      `operator.watchNamespace=${ns}`,
      '--set',
      'operator.leaseDurationSeconds=4',
      '--set',
      'operator.usageIntervalSeconds=1',
      '--set',
      'postgres.existingSecret=gpugate-db',
    ]);
    sim = await startSim(MODEL);

    // The data plane: the chart's container env; the push token file is the chart's Secret, as mounted.
    const dp = await container('gpugate-dataplane');
    const dpEnv = await resolveEnv(dp.c, 'dataplane-from-source');
    const tokenFile = join(mkdtempSync(join(tmpdir(), 'gpugate-chart-')), 'token');
    writeFileSync(tokenFile, await secretValue(ns, 'gpugate-push-token', 'token'), { mode: 0o600 });
    dpEnv.GPUGATE_PUSH_TOKEN_FILE = tokenFile;
    // startDataPlaneProcess runs the same command: node <DATAPLANE_NODE_FLAGS> dataplane/main.ts.
    expect(dp.c.command).toEqual(['node', ...DATAPLANE_NODE_FLAGS, 'dataplane/main.ts']);
    // --drain-ms 0 (the fixture's) wins over the chart's GPUGATE_DRAIN_MS.
    dataPlane = await startDataPlaneProcess({ env: dpEnv, timeoutMs: 60_000 });

    // The operator: the chart's command, args and env, as the chart's ServiceAccount.
    const op = await container('gpugate-operator');
    expect(op.c.command).toEqual(['node', 'operator/main.ts']);
    const opEnv = await resolveEnv(op.c, 'operator-from-source');
    const kubeconfig = await kubeconfigForServiceAccount(ns, op.sa);
    operator = startProcess(
      'operator/main.ts',
      [...(op.c.args ?? []), '--listen', '127.0.0.1:0', '--dataplane-url', dataPlane.adminUrl],
      { ...opEnv, KUBECONFIG: kubeconfig },
    );
    await operator.waitFor('operator listening', 60_000);
  });

  afterAll(async () => {
    await operator?.kill();
    await dataPlane?.kill();
    await sim?.close();
    await db?.drop();
  });

  it('a Tenant and an ApiKey applied with kubectl end with a simulator completion for that key', async () => {
    await kubectl(['apply', '-n', ns, '-f', '-'], {
      input: `${simBackendYaml(MODEL, sim.url)}---
apiVersion: gpugate.io/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  quota: {credits: 100000, period: Monthly}
---
apiVersion: gpugate.io/v1alpha1
kind: ApiKey
metadata: {name: team-a-key}
spec: {tenant: team-a}
`,
    });
    await waitUntil(
      'ApiKey Ready',
      async () =>
        condition(await getJson(['get', 'apikey', 'team-a-key', '-n', ns]), 'Ready')?.status === 'True',
      60_000,
    );
    const key = await secretValue(ns, 'team-a-key-gpugate-key', 'key');
    const completion = await waitUntil(
      'a completion for the key',
      async () => {
        const res = await request(`${dataPlane.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: JSON.stringify({
            model: MODEL,
            messages: [{ role: 'user', content: 'hello' }],
            max_tokens: 4,
          }),
        });
        const body = (await res.body.json()) as {
          choices?: { message?: { content?: string } }[];
          usage?: { completion_tokens?: number };
        };
        return res.statusCode === 200 && body;
      },
      60_000,
    );
    expect(completion.choices?.[0]?.message?.content).toEqual(expect.any(String));
    expect(completion.usage?.completion_tokens).toBeGreaterThan(0);

    // The lease the chart's Role lets it take, in the release namespace, under the chart's name.
    const lease = await getJson<{ spec: { holderIdentity?: string } }>([
      'get',
      'lease',
      'gpugate-operator',
      '-n',
      ns,
    ]);
    expect(lease.spec.holderIdentity).toBe('operator-from-source');
    // Metered into the database of postgres.existingSecret, read back into the Tenant's status.
    await waitUntil(
      'Tenant usage from the chart-configured database',
      async () => {
        const t = await getJson<{ status?: { usage?: { requests?: number } } }>([
          'get',
          'tenant',
          'team-a',
          '-n',
          ns,
        ]);
        return (t.status?.usage?.requests ?? 0) >= 1;
      },
      60_000,
    );
  });
});
