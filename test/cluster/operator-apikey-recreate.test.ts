// A revoked key must never come back. An ApiKey deleted and recreated under the same name while its
// generated Secret still exists (garbage collection not done yet) used to pick that Secret up again by
// name, so the old key worked until the Secret went. The race is made deterministic here by deleting the
// ApiKey with propagationPolicy Orphan: the controller manager's garbage collector removes the Secret's
// ownerReference and leaves the Secret (and its key) in place for good.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Condition } from '../../operator/api/v1alpha1/common.ts';
import { runCliCaptured } from '../fixtures/cli.ts';
import type { Proc } from '../fixtures/processes.ts';
import { kubeconfigPath, kubectl, waitUntil } from './harness.ts';
import {
  chatStatus,
  condition,
  getJson,
  secretValue,
  simBackendYaml,
  startOperatorProcess,
  startOperatorSuite,
  type OperatorSuite,
} from './operator-helpers.ts';

const TOKEN = 'apikey-recreate-push-token';
const MODEL = 'sim-recreate-8b';
const API_KEY = `
apiVersion: gpugate.io/v1alpha1
kind: ApiKey
metadata: {name: bob}
spec: {tenant: acme}
`;

interface Obj {
  metadata: { name: string; uid: string; ownerReferences?: { kind: string; uid: string }[] };
  status?: {
    secretName?: string;
    prefix?: string;
    conditions?: Condition[];
  };
}

describe('operator: an ApiKey recreated under the same name', () => {
  let suite: OperatorSuite;
  let operator: Proc & { url: string };

  beforeAll(async () => {
    suite = await startOperatorSuite({ prefix: 'apikey-recreate', token: TOKEN, model: MODEL });
    await suite.apply(`${simBackendYaml(MODEL, suite.sim.url)}---
apiVersion: gpugate.io/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {}
`);
    operator = await startOperatorProcess({
      ns: suite.ns,
      kubeconfig: suite.kubeconfig,
      dataplaneUrls: [suite.dataPlane.adminUrl],
    });
  });

  afterAll(async () => {
    await operator?.kill();
    await suite?.close();
  });

  const readyApiKey = (notUid?: string) =>
    waitUntil(
      'ApiKey bob Ready',
      async () => {
        const o = await getJson<Obj>(['get', 'apikey', 'bob', '-n', suite.ns]);
        return o.metadata.uid !== notUid && condition(o, 'Ready')?.status === 'True' && o;
      },
      60_000,
    );

  it('does not bring back the old key left in an orphaned Secret: the old key gets 401, the new one (in a Secret the new object owns) works', async () => {
    const { ns, dataPlane } = suite;
    await suite.apply(API_KEY);
    const first = await readyApiKey();
    expect(first.status?.secretName).toBe('bob-gpugate-key');
    const oldKey = await secretValue(ns, 'bob-gpugate-key', 'key');
    await waitUntil(
      'the data plane accepts the first key',
      async () => (await chatStatus(dataPlane.url, oldKey, MODEL)) === 200,
    );

    // kubectl waits until the garbage collector has orphaned the Secret and the ApiKey is gone.
    await kubectl(['delete', 'apikey', 'bob', '-n', ns, '--cascade=orphan', '--timeout=120s']);
    const orphan = await getJson<Obj>(['get', 'secret', 'bob-gpugate-key', '-n', ns]);
    expect(orphan.metadata.ownerReferences ?? []).toEqual([]);
    await waitUntil(
      'the deleted key is refused',
      async () => (await chatStatus(dataPlane.url, oldKey, MODEL)) === 401,
    );

    await suite.apply(API_KEY);
    const second = await readyApiKey(first.metadata.uid);
    const newKey = await secretValue(ns, second.status!.secretName!, 'key');
    await waitUntil(
      'the data plane accepts the key of the new ApiKey',
      async () => (await chatStatus(dataPlane.url, newKey, MODEL)) === 200,
    );
    // The snapshot that carries the new object's key was compiled with the old Secret present: the old
    // key is still refused.
    expect(await chatStatus(dataPlane.url, oldKey, MODEL)).toBe(401);
    expect(newKey).not.toBe(oldKey);
    const newSecret = `bob-gpugate-key-${second.metadata.uid.slice(0, 8)}`;
    expect(second.status?.secretName).toBe(newSecret);
    const owned = await getJson<Obj>(['get', 'secret', newSecret, '-n', ns]);
    expect(owned.metadata.ownerReferences).toEqual([
      expect.objectContaining({ kind: 'ApiKey', uid: second.metadata.uid }),
    ]);
    expect(second.status?.prefix).toBe(newKey.slice(0, 12));
    // The orphaned Secret is left alone (the operator has no delete on Secrets; docs/operator.md).
    expect(await secretValue(ns, 'bob-gpugate-key', 'key')).toBe(oldKey);
    expect(operator.log()).not.toContain(oldKey);
    expect(operator.log()).not.toContain(newKey);
  });

  it('a key made by `gpugate key create` (its Secret written before the ApiKey exists, so not owned by it) is accepted: the CLI names it in secretRef', async () => {
    const { code, stdout, stderr } = await runCliCaptured([
      'key',
      'create',
      'acme',
      '--name',
      'carol',
      '-n',
      suite.ns,
      '--kubeconfig',
      kubeconfigPath(),
    ]);
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    const key = /gpg_[0-9A-Za-z]{36}/.exec(stdout)?.[0] as string;
    await waitUntil(
      'the data plane accepts the CLI-made key',
      async () => (await chatStatus(suite.dataPlane.url, key, MODEL)) === 200,
    );
    const apiKey = await getJson<Obj & { spec: Record<string, unknown> }>([
      'get',
      'apikey',
      'carol',
      '-n',
      suite.ns,
    ]);
    expect(apiKey.spec.secretRef).toEqual({ name: 'carol-gpugate-key', key: 'key' });
  });
});
