// The real scheduler places pods on kwok's fake nodes by nvidia.com/gpu capacity and the GPU taint, kwok marks
// placed pods Running, and the controller manager runs Deployments, EndpointSlices and garbage collection.
import { beforeAll, describe, expect, it } from 'vitest';
import { fakeNodes } from './cluster.ts';
import { kubectl, newNamespace, waitUntil } from './harness.ts';

interface Condition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
}

interface Pod {
  metadata: { name: string };
  spec: { nodeName?: string };
  status: { phase: string; conditions?: Condition[] };
}

const gpuNodes = fakeNodes.filter((node) => 'nvidia.com/gpu' in node.capacity).map((node) => node.name);
const cpuNodes = fakeNodes.filter((node) => !('nvidia.com/gpu' in node.capacity)).map((node) => node.name);
const gpuToleration = { key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' };

function pod(name: string, spec: { gpus?: number; tolerate?: boolean; nodeName?: string; labels?: object }) {
  const resources = spec.gpus
    ? { limits: { 'nvidia.com/gpu': String(spec.gpus) } }
    : { requests: { cpu: '100m' } };
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, labels: spec.labels ?? {} },
    spec: {
      containers: [{ name: 'model-server', image: 'gpugate.test/model-server:1', resources }],
      tolerations: spec.tolerate ? [gpuToleration] : [],
      ...(spec.nodeName ? { nodeSelector: { 'kubernetes.io/hostname': spec.nodeName } } : {}),
    },
  };
}

async function getPod(namespace: string, name: string): Promise<Pod> {
  return JSON.parse(await kubectl(['get', 'pod', name, '-n', namespace, '-o', 'json'])) as Pod;
}

function condition(pod: Pod, type: string): Condition | undefined {
  return pod.status.conditions?.find((candidate) => candidate.type === type);
}

async function apply(namespace: string, object: object): Promise<void> {
  await kubectl(['apply', '-n', namespace, '-f', '-'], { input: JSON.stringify(object) });
}

async function waitUnschedulable(namespace: string, name: string): Promise<Condition> {
  return waitUntil(`pod ${name} marked Unschedulable`, async () => {
    const scheduled = condition(await getPod(namespace, name), 'PodScheduled');
    return scheduled?.status === 'False' && scheduled.reason === 'Unschedulable' ? scheduled : undefined;
  });
}

describe('scheduling onto fake GPU nodes', () => {
  let namespace: string;
  beforeAll(async () => {
    namespace = await newNamespace('scheduling');
  });

  it('places a pod requesting one nvidia.com/gpu on a GPU node, where kwok marks it Running and Ready', async () => {
    await apply(namespace, pod('one-gpu', { gpus: 1, tolerate: true }));
    const running = await waitUntil('pod one-gpu Running and Ready', async () => {
      const current = await getPod(namespace, 'one-gpu');
      return current.status.phase === 'Running' && condition(current, 'Ready')?.status === 'True' && current;
    });
    expect(gpuNodes).toContain(running.spec.nodeName);
  });

  it('keeps a pod requesting more GPUs than any node has Pending with the scheduler reason', async () => {
    await apply(namespace, pod('sixteen-gpus', { gpus: 16, tolerate: true }));
    const scheduled = await waitUnschedulable(namespace, 'sixteen-gpus');
    expect(scheduled.message).toMatch(/0\/5 nodes are available: .*Insufficient nvidia\.com\/gpu/);

    const events = JSON.parse(
      await kubectl([
        'get',
        'events',
        '-n',
        namespace,
        '--field-selector',
        'involvedObject.name=sixteen-gpus,reason=FailedScheduling',
        '-o',
        'json',
      ]),
    ) as { items: { message: string }[] };
    expect(events.items.map((event) => event.message).join('\n')).toMatch(/Insufficient nvidia\.com\/gpu/);

    const pending = await getPod(namespace, 'sixteen-gpus');
    expect(pending.status.phase).toBe('Pending');
    expect(pending.spec.nodeName).toBeUndefined();
  });

  it('never places a CPU pod without the toleration on a tainted GPU node', async () => {
    // Pinned to a GPU node, the taint is the only thing in the way: the scheduler must say so.
    await apply(namespace, pod('cpu-on-gpu-node', { nodeName: 'gpu-h100-0' }));
    const scheduled = await waitUnschedulable(namespace, 'cpu-on-gpu-node');
    // The taint filter runs before the node selector, so the GPU nodes are the ones turned down for the taint.
    expect(scheduled.message).toMatch(new RegExp(`${gpuNodes.length} node\\(s\\) had untolerated taint`));

    // Free to go anywhere, CPU pods all end up on CPU nodes although the GPU nodes have more room.
    for (let index = 0; index < 6; index += 1)
      await apply(namespace, pod(`cpu-${index}`, { labels: { cpu: 'y' } }));
    const placed = await waitUntil('six CPU pods Running', async () => {
      const list = JSON.parse(
        await kubectl(['get', 'pods', '-n', namespace, '-l', 'cpu=y', '-o', 'json']),
      ) as {
        items: Pod[];
      };
      return (
        list.items.length === 6 && list.items.every((item) => item.status.phase === 'Running') && list.items
      );
    });
    for (const item of placed) expect(cpuNodes).toContain(item.spec.nodeName);
  });
});

describe('controllers of the controller manager', () => {
  let namespace: string;
  beforeAll(async () => {
    namespace = await newNamespace('controllers');
  });

  it('turns a Deployment into Running pods, serves them in an EndpointSlice and collects them on delete', async () => {
    const labels = { app: 'model-server' };
    await apply(namespace, {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'model-server' },
      spec: {
        replicas: 3,
        selector: { matchLabels: labels },
        template: { metadata: { labels }, spec: pod('template', { gpus: 2, tolerate: true }).spec },
      },
    });
    await apply(namespace, {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'model-server' },
      spec: { selector: labels, ports: [{ name: 'http', port: 8000 }] },
    });

    const pods = await waitUntil('three model-server pods Running on GPU nodes', async () => {
      const list = JSON.parse(
        await kubectl(['get', 'pods', '-n', namespace, '-l', 'app=model-server', '-o', 'json']),
      );
      const items = (list as { items: (Pod & { status: { podIP?: string } })[] }).items;
      return (
        items.length === 3 &&
        items.every((item) => item.status.phase === 'Running' && item.status.podIP) &&
        items
      );
    });
    for (const item of pods) expect(gpuNodes).toContain(item.spec.nodeName);

    const ready = await waitUntil('an EndpointSlice with three ready endpoints', async () => {
      const slices = JSON.parse(
        await kubectl([
          'get',
          'endpointslices',
          '-n',
          namespace,
          '-l',
          'kubernetes.io/service-name=model-server',
          '-o',
          'json',
        ]),
      ) as { items: { endpoints?: { addresses: string[]; conditions: { ready?: boolean } }[] }[] };
      const endpoints = slices.items.flatMap((slice) => slice.endpoints ?? []);
      const addresses = endpoints.filter((endpoint) => endpoint.conditions.ready).flatMap((e) => e.addresses);
      return addresses.length === 3 && addresses;
    });
    expect(ready.sort()).toEqual(pods.map((item) => item.status.podIP).sort());

    await kubectl(['delete', 'deployment', 'model-server', '-n', namespace, '--wait=false']);
    await waitUntil('the garbage collector removes the ReplicaSet and its pods', async () => {
      const left = await kubectl([
        'get',
        'replicasets,pods',
        '-n',
        namespace,
        '-l',
        'app=model-server',
        '-o',
        'name',
      ]);
      return left.trim() === '';
    });
  });
});
