// Leader election with two operator processes sharing one Lease: only the leader pushes; kill it and the
// other takes the Lease over and pushes the next change; the follower serves the current snapshot throughout.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DataPlaneProcess, Proc } from '../fixtures/processes.ts';
import { kubectl, waitUntil } from './harness.ts';
import {
  chatStatus,
  getJson,
  secretValue,
  simBackendYaml,
  startOperatorProcess,
  startOperatorSuite,
  type OperatorSuite,
} from './operator-helpers.ts';

const TOKEN = 'leader-test-push-token';
const MODEL = 'sim-llama-8b';

describe('operator leader election', () => {
  let suite: OperatorSuite;
  let ns: string;
  let dataPlane: DataPlaneProcess;
  const operators: (Proc & { url: string })[] = [];
  const apply = (yaml: string) => suite.apply(yaml);

  beforeAll(async () => {
    suite = await startOperatorSuite({ prefix: 'operator-leader', token: TOKEN, model: MODEL });
    ({ ns, dataPlane } = suite);
    const { kubeconfig } = suite;
    await apply(`${simBackendYaml(MODEL, suite.sim.url)}---
apiVersion: gpugate.io/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {}
`);
    for (const identity of ['op-a', 'op-b']) {
      operators.push(
        await startOperatorProcess({
          ns,
          kubeconfig,
          identity,
          dataplaneUrls: [dataPlane.adminUrl],
          leaseDurationMs: 2000,
        }),
      );
    }
  });

  afterAll(async () => {
    for (const o of operators) await o.kill();
    await suite?.close();
  });

  const holder = async () =>
    (await getJson<{ spec: { holderIdentity?: string } }>(['get', 'lease', 'gpugate-operator', '-n', ns]))
      .spec.holderIdentity;

  const newKeyAccepted = async (name: string) => {
    await apply(`
apiVersion: gpugate.io/v1alpha1
kind: ApiKey
metadata: {name: ${name}}
spec: {tenant: acme}
`);
    const secret = `${name}-gpugate-key`;
    await waitUntil(`Secret ${secret}`, async () =>
      (await kubectl(['get', 'secrets', '-n', ns, '-o', 'name'])).includes(`secret/${secret}`),
    );
    const key = await secretValue(ns, secret, 'key');
    await waitUntil(
      `key ${name} accepted`,
      async () => (await chatStatus(dataPlane.url, key, MODEL)) === 200,
      20_000,
    );
  };

  it('one operator leads and pushes; killed with SIGKILL, the other takes the Lease over and pushes the next key; the follower serves GET /snapshot all along', async () => {
    const first = await waitUntil('a Lease holder', async () => (await holder()) || undefined);
    expect(['op-a', 'op-b']).toContain(first);
    await newKeyAccepted('before');
    const leader = operators.find((o) => o.log().includes('"msg":"became leader"'))!;
    const follower = operators.find((o) => o !== leader)!;
    expect(follower.log()).not.toContain('"msg":"became leader"');
    const snap = await fetch(`${follower.url}/snapshot`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(snap.status).toBe(200);

    const killed = Date.now();
    await leader.kill('SIGKILL');
    await follower.waitFor('became leader', 15_000);
    console.log(
      `[operator] follower took the lease over ${Date.now() - killed} ms after SIGKILL (lease 2 s)`,
    );
    expect(await holder()).not.toBe(first);
    await newKeyAccepted('after');
    expect(follower.log()).toContain('"msg":"generated key Secret"');
  });
});
