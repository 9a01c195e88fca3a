// `dataplane: sidecar` on an operator started without --sidecar-image, on the real control plane: the
// operator cannot inject a container it has no image for, so the GpuBackend says so in its Ready condition
// (reason SidecarImageNotSet, a message naming the flag and the chart value) instead of silently running
// the pods without it; the same backend gets its sidecar and loses the condition once an operator with an
// image takes over.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Condition } from '../../operator/api/v1alpha1/common.ts';
import type { Proc } from '../fixtures/processes.ts';
import { kubectl, waitUntil } from './harness.ts';
import { condition, getJson, operatorNamespace, startOperatorProcess } from './operator-helpers.ts';

interface BackendJson {
  metadata: { generation: number };
  status?: { conditions?: Condition[] };
}
interface DeploymentJson {
  spec: { template: { spec: { containers: { name: string; image: string }[] } } };
}
interface ServiceJson {
  spec: { ports: { name: string }[] };
}

const SIDECAR_IMAGE = 'gpugate/gpugate:sidecar-image-test';

describe('dataplane: sidecar without a sidecar image', () => {
  let ns: string;
  let kubeconfig: string;
  let operator: (Proc & { url: string }) | undefined;

  beforeAll(async () => {
    ({ ns, kubeconfig } = await operatorNamespace('sidecar-image', 't0ken'));
    operator = await startOperatorProcess({ ns, kubeconfig });
    await operator.waitFor('caches synced');
  });
  afterAll(async () => {
    await operator?.kill();
  });

  it('is Ready=False SidecarImageNotSet naming --sidecar-image and the chart value, and clears once an operator with an image runs', async () => {
    await kubectl(['apply', '-n', ns, '-f', '-'], {
      input: `
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: wants-sidecar}
spec:
  deployment: {image: vllm/vllm-openai:v0.11.0, replicas: 1, gpusPerReplica: 1, dataplane: sidecar}
---
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: shared}
spec:
  deployment: {image: vllm/vllm-openai:v0.11.0, replicas: 1, gpusPerReplica: 1}
`,
    });
    const backend = (name: string) => getJson<BackendJson>(['get', 'gpubackend', name, '-n', ns]);
    const flagged = await waitUntil('Ready=False SidecarImageNotSet', async () => {
      const o = await backend('wants-sidecar');
      return condition(o, 'Ready')?.reason === 'SidecarImageNotSet' && o;
    });
    expect(condition(flagged, 'Ready')).toMatchObject({
      status: 'False',
      observedGeneration: flagged.metadata.generation,
    });
    const message = condition(flagged, 'Ready')!.message;
    expect(message).toContain('deployment.dataplane is sidecar, but the operator has no sidecar image');
    expect(message).toContain('--sidecar-image');
    expect(message).toContain('GPUGATE_SIDECAR_IMAGE');
    expect(message).toContain('image.repository');
    // Every reference of the object resolves: what is missing is the operator's setting.
    expect(condition(flagged, 'ResolvedRefs')).toMatchObject({ status: 'True', reason: 'Resolved' });
    // The model server is still deployed, without the sidecar (that is what the condition reports).
    const dep = await getJson<DeploymentJson>(['get', 'deployment', 'wants-sidecar-gpugate', '-n', ns]);
    expect(dep.spec.template.spec.containers.map((c) => c.name)).toEqual(['model']);
    const svc = await getJson<ServiceJson>(['get', 'service', 'wants-sidecar-gpugate', '-n', ns]);
    expect(svc.spec.ports.map((p) => p.name)).toEqual(['http']);

    // A shared-mode backend on the same operator has its Deployment and no such condition.
    await waitUntil('Deployment shared-gpugate', () =>
      getJson(['get', 'deployment', 'shared-gpugate', '-n', ns]),
    );
    const shared = await waitUntil('Ready set on the shared backend', async () => {
      const o = await backend('shared');
      return condition(o, 'Ready') !== undefined && o;
    });
    expect(condition(shared, 'Ready')!.reason).not.toBe('SidecarImageNotSet');

    // The fix the message names: an operator with --sidecar-image.
    await operator!.kill();
    operator = await startOperatorProcess({ ns, kubeconfig, extra: ['--sidecar-image', SIDECAR_IMAGE] });
    const withSidecar = await waitUntil('the sidecar container injected', async () => {
      const d = await getJson<DeploymentJson>(['get', 'deployment', 'wants-sidecar-gpugate', '-n', ns]);
      return d.spec.template.spec.containers.some((c) => c.name === 'gpugate') && d;
    });
    expect(withSidecar.spec.template.spec.containers.find((c) => c.name === 'gpugate')?.image).toBe(
      SIDECAR_IMAGE,
    );
    const cleared = await waitUntil('Ready no longer SidecarImageNotSet', async () => {
      const o = await backend('wants-sidecar');
      const ready = condition(o, 'Ready');
      return ready !== undefined && ready.reason !== 'SidecarImageNotSet' && o;
    });
    expect(condition(cleared, 'Ready')!.message).not.toContain('sidecar image');
    expect(condition(cleared, 'ResolvedRefs')).toMatchObject({ status: 'True', reason: 'Resolved' });
  });
});
