// Leader election with two operator processes sharing one Lease: only the leader pushes; kill it and the
// other takes the Lease over and pushes the next change; the follower serves the current snapshot throughout.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { startDataPlaneProcess, type DataPlaneProcess, type Proc } from '../fixtures/processes.ts';
import { kubectl, newNamespace, waitUntil } from './harness.ts';
import {
  chatStatus,
  getJson,
  installCrds,
  operatorServiceAccount,
  secretValue,
  startOperatorProcess,
} from './operator-helpers.ts';

const TOKEN = 'leader-test-push-token';
const MODEL = 'sim-llama-8b';

describe('operator leader election', () => {
  let ns: string;
  let sim: Simulator;
  let dataPlane: DataPlaneProcess;
  const operators: (Proc & { url: string })[] = [];
  const apply = (yaml: string) => kubectl(['apply', '-n', ns, '-f', '-'], { input: yaml });

  beforeAll(async () => {
    await installCrds();
    ns = await newNamespace('operator-leader');
    const kubeconfig = await operatorServiceAccount(ns);
    await kubectl(['create', 'secret', 'generic', 'push-token', '-n', ns, `--from-literal=token=${TOKEN}`]);
    sim = await startSimulator({
      host: '127.0.0.1',
      port: 0,
      name: 'sim',
      models: [MODEL],
      decodeMsPerToken: 1,
    });
    dataPlane = await startDataPlaneProcess({ token: TOKEN });
    await apply(`
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: sim}
spec: {models: [${MODEL}], endpoints: [{url: "${sim.url}"}]}
---
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
    await dataPlane?.kill();
    await sim?.close();
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
