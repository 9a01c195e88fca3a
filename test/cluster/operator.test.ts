// The operator on the real control plane, as a process (node operator/main.ts) with its own service
// account bound to exactly operator/rbac/rules.ts. kwok pods run no code, so managed backends are checked
// through the objects (Deployment, pods, EndpointSlices, status); real traffic goes to a data-plane process
// on loopback, which the operator finds through --dataplane-url (in a cluster: the data plane Service's
// EndpointSlices), and from there to a GPU simulator named by a static endpoint.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Condition } from '../../operator/api/v1alpha1/common.ts';
import type { FleetStatus } from '../../operator/aggregate/aggregate.ts';
import { startDataPlaneProcess, type DataPlaneProcess, type Proc } from '../fixtures/processes.ts';
import { kubectl, waitUntil } from './harness.ts';
import { canonicalJson } from '../../dataplane/config/revision.ts';
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

const TOKEN = 'operator-test-push-token';
const MODEL = 'sim-llama-8b';
const SIDECAR_IMAGE = 'gpugate/gpugate:test';

interface Obj {
  metadata: {
    name: string;
    uid: string;
    ownerReferences?: { kind: string; name: string; controller?: boolean }[];
    labels?: Record<string, string>;
  };
  spec?: Record<string, unknown>;
  status?: Record<string, unknown> & {
    conditions?: Condition[];
  };
}

describe('operator', () => {
  let suite: OperatorSuite;
  let ns: string;
  let kubeconfig: string;
  let dataPlane: DataPlaneProcess;
  let operator: Proc & { url: string };
  const apply = (yaml: string) => suite.apply(yaml);

  beforeAll(async () => {
    suite = await startOperatorSuite({ prefix: 'operator', token: TOKEN, model: MODEL });
    ({ ns, kubeconfig, dataPlane } = suite);
    await apply(`${simBackendYaml(MODEL, suite.sim.url)}---
apiVersion: gpugate.io/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {}
`);
    operator = await startOperatorProcess({
      ns,
      kubeconfig,
      dataplaneUrls: [dataPlane.adminUrl],
      extra: ['--sidecar-image', SIDECAR_IMAGE, '--trusted-proxies', '10.244.0.0/16, fd00::/64'],
    });
  });

  afterAll(async () => {
    await operator?.kill();
    await suite?.close();
  });

  it('a GpuBackend with a deployment becomes an owned Deployment with nvidia.com/gpu requests and limits, whose pods the scheduler puts on GPU nodes only; status counts ready endpoints from the EndpointSlices', async () => {
    await apply(`
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: llama}
spec:
  models: [llama-8b]
  deployment:
    image: vllm/vllm-openai:v0.11.0
    replicas: 2
    gpusPerReplica: 1
    nodeSelector: {nvidia.com/gpu.present: "true"}
    env: [{name: HF_TOKEN, secretKeyRef: {name: hf, key: token}}]
`);
    const dep = await waitUntil('Deployment llama-gpugate', () =>
      getJson<Obj & { spec: { template: { spec: Record<string, never> } } }>([
        'get',
        'deployment',
        'llama-gpugate',
        '-n',
        ns,
      ]),
    );
    const gb = await getJson<Obj>(['get', 'gpubackend', 'llama', '-n', ns]);
    expect(dep.metadata.ownerReferences).toEqual([
      expect.objectContaining({ kind: 'GpuBackend', name: 'llama', controller: true }),
    ]);
    expect(dep.metadata.labels?.['app.kubernetes.io/managed-by']).toBe('gpugate');
    const pod = dep.spec.template.spec as unknown as {
      containers: { resources: unknown; readinessProbe: unknown; env: unknown }[];
      tolerations: unknown;
      nodeSelector: unknown;
    };
    expect(pod.containers[0]!.resources).toEqual({
      requests: { 'nvidia.com/gpu': '1' },
      limits: { 'nvidia.com/gpu': '1' },
    });
    expect(pod.tolerations).toEqual([{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }]);
    expect(pod.nodeSelector).toEqual({ 'nvidia.com/gpu.present': 'true' });
    expect(pod.containers[0]!.readinessProbe).toMatchObject({ httpGet: { path: '/health', port: 'http' } });
    expect(pod.containers[0]!.env).toEqual([
      { name: 'HF_TOKEN', valueFrom: { secretKeyRef: { name: 'hf', key: 'token' } } },
    ]);
    const svc = await getJson<Obj>(['get', 'service', 'llama-gpugate', '-n', ns]);
    expect(svc.metadata.ownerReferences?.[0]?.name).toBe('llama');
    expect(gb.metadata.uid).toBeTruthy();

    const ready = await waitUntil(
      'GpuBackend llama Ready 2/2',
      async () => {
        const o = await getJson<Obj>(['get', 'gpubackend', 'llama', '-n', ns]);
        return o.status?.readyEndpoints === '2/2' && condition(o, 'Ready')?.status === 'True' && o;
      },
      60_000,
    );
    expect(ready.status?.modelList).toBe('llama-8b');
    expect(condition(ready, 'Ready')?.reason).toBe('EndpointsReady');
    expect(ready.status?.observedGeneration).toBe(1);
    const pods = await getJson<{ items: { spec: { nodeName: string } }[] }>([
      'get',
      'pods',
      '-n',
      ns,
      '-l',
      'gpugate.io/backend=llama',
    ]);
    expect(pods.items).toHaveLength(2);
    for (const p of pods.items) expect(p.spec.nodeName).toMatch(/^gpu-/);
    // The snapshot holds the pods' addresses as discovered endpoints.
    const snap = (await (
      await fetch(`${operator.url}/snapshot`, { headers: { authorization: `Bearer ${TOKEN}` } })
    ).json()) as {
      backends: { id: string; endpoints: { source: string; ready: boolean }[] }[];
    };
    const llama = snap.backends.find((b) => b.id === `${ns}/llama`)!;
    expect(llama.endpoints.filter((e) => e.source === 'pod' && e.ready)).toHaveLength(2);
  });

  it('a pod that asks for more GPUs than any node has stays Pending and the GpuBackend says Unschedulable', async () => {
    await apply(`
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: huge}
spec:
  deployment: {image: vllm/vllm-openai:v0.11.0, replicas: 1, gpusPerReplica: 16}
`);
    const o = await waitUntil(
      'GpuBackend huge Unschedulable',
      async () => {
        const gb = await getJson<Obj>(['get', 'gpubackend', 'huge', '-n', ns]);
        return condition(gb, 'Ready')?.reason === 'Unschedulable' && gb;
      },
      60_000,
    );
    expect(condition(o, 'Ready')).toMatchObject({ status: 'False', reason: 'Unschedulable' });
    expect(condition(o, 'Ready')?.message).toContain('Insufficient nvidia.com/gpu');
    expect(o.status?.readyEndpoints).toBe('0/1');
  });

  it('an ApiKey without secretRef gets a generated, owned Secret; the data plane then accepts the key against the simulator; deleting the ApiKey refuses it within a second', async () => {
    await apply(`
apiVersion: gpugate.io/v1alpha1
kind: ApiKey
metadata: {name: alice}
spec: {tenant: acme}
`);
    const ak = await waitUntil('ApiKey alice Ready', async () => {
      const o = await getJson<Obj>(['get', 'apikey', 'alice', '-n', ns]);
      return condition(o, 'Ready')?.status === 'True' && o;
    });
    const secret = await getJson<Obj & { data: Record<string, string> }>([
      'get',
      'secret',
      'alice-gpugate-key',
      '-n',
      ns,
    ]);
    expect(secret.metadata.ownerReferences).toEqual([
      expect.objectContaining({ kind: 'ApiKey', name: 'alice', controller: true }),
    ]);
    expect(secret.metadata.labels?.['app.kubernetes.io/managed-by']).toBe('gpugate');
    const key = await secretValue(ns, 'alice-gpugate-key', 'key');
    expect(key).toMatch(/^gpg_/);
    expect(ak.status).toMatchObject({
      prefix: key.slice(0, 12),
      secretName: 'alice-gpugate-key',
      observedGeneration: 1,
    });
    expect(JSON.stringify(ak.status)).not.toContain(key);
    expect(operator.log()).not.toContain(key);

    await waitUntil(
      'the data plane accepts the new key',
      async () => (await chatStatus(dataPlane.url, key, MODEL)) === 200,
    );
    expect(dataPlane.log()).not.toContain(key);

    const deleted = Date.now();
    await kubectl(['delete', 'apikey', 'alice', '-n', ns, '--wait=false']);
    await waitUntil(
      'the key is refused',
      async () => (await chatStatus(dataPlane.url, key, MODEL)) === 401,
      5_000,
    );
    const enforcedMs = Date.now() - deleted;
    // The design's "within a second" is a figure to watch (printed here, measured in the operator
    // benchmark), not a wall-clock assertion that a loaded CI machine could break.
    console.log(`[operator] key deletion enforced after ${enforcedMs} ms`);
    // Garbage collection removes the owned Secret (the controller manager's GC takes ~20 s here).
    await waitUntil(
      'Secret alice-gpugate-key gone',
      async () =>
        !(await kubectl(['get', 'secrets', '-n', ns, '-o', 'name'])).includes('secret/alice-gpugate-key'),
      90_000,
    );
  });

  it('an ApiKey whose tenant is missing is Ready=False with the compiler reason', async () => {
    await apply(`
apiVersion: gpugate.io/v1alpha1
kind: ApiKey
metadata: {name: orphan}
spec: {tenant: nobody}
`);
    const o = await waitUntil('ApiKey orphan TenantNotFound', async () => {
      const ak = await getJson<Obj>(['get', 'apikey', 'orphan', '-n', ns]);
      return condition(ak, 'Ready')?.reason === 'TenantNotFound' && ak;
    });
    expect(condition(o, 'ResolvedRefs')).toMatchObject({ status: 'False', reason: 'TenantNotFound' });
    expect(condition(o, 'Ready')?.message).toContain(`Tenant ${ns}/nobody not found`);
    const tenant = await getJson<Obj>(['get', 'tenant', 'acme', '-n', ns]);
    expect(condition(tenant, 'Ready')?.status).toBe('True');
  });

  it('a data plane started with --operator-url gets the current snapshot from the operator (GET /snapshot with the push token)', async () => {
    const unauth = await fetch(`${operator.url}/snapshot`, { headers: { authorization: 'Bearer nope' } });
    expect(unauth.status).toBe(401);
    const late = await startDataPlaneProcess({ token: TOKEN, args: ['--operator-url', operator.url] });
    try {
      const applied = await late.waitFor('snapshot from the operator');
      const text = await (
        await fetch(`${operator.url}/snapshot`, { headers: { authorization: `Bearer ${TOKEN}` } })
      ).text();
      const current = JSON.parse(text) as { revision: string; settings: { trustedProxies?: string[] } };
      expect(current.revision.startsWith(applied.revision as string)).toBe(true);
      // Served as canonical JSON (sorted members), which the data plane verifies fastest.
      expect(text).toBe(canonicalJson(current));
      // --trusted-proxies reaches the data planes through the snapshot's settings.
      expect(current.settings.trustedProxies).toEqual(['10.244.0.0/16', 'fd00::/64']);
      const ready = await fetch(`${late.adminUrl}/readyz`);
      expect(ready.status).toBe(200);
    } finally {
      await late.kill();
    }
  });

  it('operator metrics count reconciles and pushes', async () => {
    const text = await (await fetch(`${operator.url}/metrics`)).text();
    expect(text).toMatch(/gpugate_operator_reconciles_total\{kind="ApiKey",result="done"\} [1-9]/);
    expect(text).toMatch(/gpugate_operator_pushes_total\{result="ok"\} [1-9]/);
    expect(text).toContain('gpugate_operator_snapshot_age_seconds');
    expect(text).toContain('gpugate_operator_queue_depth');
  });

  it('a restarted operator makes no duplicate children and keeps the generated key', async () => {
    await apply(`
apiVersion: gpugate.io/v1alpha1
kind: ApiKey
metadata: {name: bob}
spec: {tenant: acme}
`);
    await waitUntil('bob Secret', async () =>
      (await kubectl(['get', 'secrets', '-n', ns, '-o', 'name'])).includes('secret/bob-gpugate-key'),
    );
    const before = await secretValue(ns, 'bob-gpugate-key', 'key');
    const rsBefore = await getJson<{ items: Obj[] }>([
      'get',
      'replicasets',
      '-n',
      ns,
      '-l',
      'gpugate.io/backend=llama',
    ]);
    await operator.kill();
    operator = await startOperatorProcess({
      ns,
      kubeconfig,
      dataplaneUrls: [dataPlane.adminUrl],
      extra: ['--sidecar-image', SIDECAR_IMAGE],
    });
    await operator.waitFor('caches synced');
    await operator.waitFor('became leader', 15_000);
    await new Promise((r) => setTimeout(r, 2000));
    const deployments = await getJson<{ items: Obj[] }>(['get', 'deployments', '-n', ns]);
    expect(deployments.items.map((d) => d.metadata.name).sort()).toEqual(['huge-gpugate', 'llama-gpugate']);
    const services = await getJson<{ items: Obj[] }>(['get', 'services', '-n', ns]);
    expect(services.items.map((d) => d.metadata.name).sort()).toEqual(['huge-gpugate', 'llama-gpugate']);
    const rsAfter = await getJson<{ items: Obj[] }>([
      'get',
      'replicasets',
      '-n',
      ns,
      '-l',
      'gpugate.io/backend=llama',
    ]);
    expect(rsAfter.items.map((r) => r.metadata.uid)).toEqual(rsBefore.items.map((r) => r.metadata.uid));
    expect(await secretValue(ns, 'bob-gpugate-key', 'key')).toBe(before);
    expect(operator.log()).not.toContain('generated key Secret');
  });

  it('dataplane: sidecar injects the data-plane container (push token mounted, admin port in the Service) and the sidecars become push targets', async () => {
    await apply(`
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: side}
spec:
  deployment: {image: vllm/vllm-openai:v0.11.0, replicas: 1, gpusPerReplica: 1, dataplane: sidecar, port: 8000}
`);
    const dep = await waitUntil('Deployment side-gpugate', () =>
      getJson<{
        spec: {
          template: {
            spec: {
              containers: { name: string; image: string; ports: { name: string }[] }[];
              volumes: unknown[];
            };
          };
        };
      }>(['get', 'deployment', 'side-gpugate', '-n', ns]),
    );
    const containers = dep.spec.template.spec.containers;
    expect(containers.map((c) => c.name)).toEqual(['model', 'gpugate']);
    expect(containers[1]!.image).toBe(SIDECAR_IMAGE);
    expect(containers[1]!.ports.map((p) => p.name)).toEqual(['gpugate', 'gpugate-admin']);
    expect(dep.spec.template.spec.volumes).toEqual([
      expect.objectContaining({ secret: expect.objectContaining({ secretName: 'push-token' }) }),
    ]);
    const svc = await getJson<{ spec: { ports: { name: string }[] } }>([
      'get',
      'service',
      'side-gpugate',
      '-n',
      ns,
    ]);
    expect(svc.spec.ports.map((p) => p.name)).toEqual(['http', 'gpugate', 'gpugate-admin']);
    // kwok pods run nothing, so the push to the sidecar's admin port fails; that it is tried shows the target.
    await waitUntil('a push attempt to the sidecar', async () => {
      const pod = await getJson<{ items: { status: { podIP?: string } }[] }>([
        'get',
        'pods',
        '-n',
        ns,
        '-l',
        'gpugate.io/backend=side',
      ]);
      const ip = pod.items[0]?.status.podIP;
      return ip !== undefined && operator.log().includes(`"target":"http://${ip}:9090"`);
    });
  });

  it('GET /fleet merges what the operator pushes to: the data-plane process on the current revision, the sidecar found through its EndpointSlice expected on its own variant and named unreachable (kwok runs nothing)', async () => {
    expect((await fetch(`${operator.url}/fleet`)).status).toBe(401);
    const auth = { headers: { authorization: `Bearer ${TOKEN}` } };
    const dpHost = new URL(dataPlane.adminUrl).host;
    // Polled: the sidecar's apply recompiles, and the push of that revision may still be on its way.
    const { fleet, revision } = await waitUntil(
      'the sidecar and the current revision in /fleet',
      async () => {
        const snap = (await (await fetch(`${operator.url}/snapshot`, auth)).json()) as { revision: string };
        const f = (await (await fetch(`${operator.url}/fleet`, auth)).json()) as FleetStatus;
        const dp = f.replicas.find((r) => r.target === dpHost);
        const side = f.replicas.some((r) => r.target.endsWith(`(sidecar of ${ns}/side)`));
        return side && dp?.revision === snap.revision ? { fleet: f, revision: snap.revision } : undefined;
      },
    );
    expect(fleet.expectedRevision).toBe(revision);
    expect(fleet.replicas.find((r) => r.target === dpHost)).toMatchObject({
      reachable: true,
      expectedRevision: revision,
    });
    const side = fleet.replicas.find((r) => r.target.endsWith(`(sidecar of ${ns}/side)`))!;
    expect(side.reachable).toBe(false);
    expect(side.expectedRevision).toMatch(/^[0-9a-f]{64}$/);
    expect(side.expectedRevision).not.toBe(revision);
    expect(fleet.disagreements).toContainEqual({
      kind: 'unreachable',
      target: side.target,
      error: expect.any(String),
    });
    expect(fleet.disagreements.filter((d) => d.kind === 'revision')).toEqual([]);
    expect(fleet.backends.map((b) => b.id)).toContain(`${ns}/sim`);
  });

  it('RBAC: the operator runs as its own service account, which cannot do what the operator does not need', async () => {
    // can-i exits 1 on "no"; the harness then rejects with a message ending in kubectl's answer.
    const can = async (verb: string, resource: string, ...extra: string[]) =>
      (
        await kubectl(['auth', 'can-i', verb, resource, '-n', ns, ...extra], { kubeconfig }).catch(
          (e: Error) => e.message,
        )
      ).trim();
    const who = JSON.parse(await kubectl(['auth', 'whoami', '-o', 'json'], { kubeconfig })) as {
      status: { userInfo: { username: string } };
    };
    expect(who.status.userInfo.username).toBe(`system:serviceaccount:${ns}:gpugate-operator`);
    expect(await can('patch', 'deployments.apps')).toBe('yes');
    expect(await can('create', 'secrets')).toBe('yes');
    expect(await can('update', 'apikeys.gpugate.io', '--subresource=status')).toBe('yes');
    for (const [verb, resource] of [
      ['delete', 'deployments.apps'],
      ['update', 'secrets'],
      ['delete', 'secrets'],
      ['create', 'pods'],
      ['update', 'apikeys.gpugate.io'],
      ['delete', 'gpubackends.gpugate.io'],
      ['create', 'rolebindings.rbac.authorization.k8s.io'],
      ['create', 'events'],
    ]) {
      expect(await can(verb!, resource!), `${verb} ${resource}`).toMatch(/\bno\b/);
    }
  });
});
