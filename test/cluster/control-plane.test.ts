// The control plane itself: the pinned version answers, clients authenticate with the harness's kubeconfigs,
// and RBAC is enforced for a service account's token.
import { CoreV1Api, KubeConfig, VersionApi } from '@kubernetes/client-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { readVersions } from './cluster.ts';
import {
  clusterInfo,
  kubeconfigForServiceAccount,
  kubeconfigPath,
  kubectl,
  newNamespace,
} from './harness.ts';

describe('control plane', () => {
  it('answers with the pinned Kubernetes version, and kubectl is the same version', async () => {
    const pinned = readVersions().kubernetes;
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfigPath());
    const server = await kc.makeApiClient(VersionApi).getCode();
    expect(server.gitVersion).toBe(pinned);
    expect(clusterInfo().kubernetesVersion).toBe(pinned);

    const versions = JSON.parse(await kubectl(['version', '-o', 'json'])) as {
      clientVersion: { gitVersion: string };
      serverVersion: { gitVersion: string };
    };
    expect(versions.clientVersion.gitVersion).toBe(pinned);
    expect(versions.serverVersion.gitVersion).toBe(pinned);
  });

  it('lists the fake GPU and CPU nodes as Ready with nvidia.com/gpu capacity', async () => {
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfigPath());
    const nodes = await kc.makeApiClient(CoreV1Api).listNode();
    const byName = new Map(nodes.items.map((node) => [node.metadata?.name, node]));
    const gpus = (name: string): string | undefined =>
      byName.get(name)?.status?.allocatable?.['nvidia.com/gpu'];
    expect(gpus('gpu-a100-0')).toBe('4');
    expect(gpus('gpu-h100-0')).toBe('8');
    expect(gpus('cpu-0')).toBeUndefined();
    for (const node of nodes.items) {
      const ready = node.status?.conditions?.find((condition) => condition.type === 'Ready');
      expect(ready?.status, `node ${node.metadata?.name} Ready`).toBe('True');
    }
    expect(byName.get('gpu-a100-1')?.spec?.taints).toEqual([
      { key: 'nvidia.com/gpu', value: 'present', effect: 'NoSchedule' },
    ]);
  });

  describe('a service account token (how the operator authenticates)', () => {
    let namespace: string;
    let operatorKubeconfig: string;
    beforeAll(async () => {
      namespace = await newNamespace('rbac');
      operatorKubeconfig = await kubeconfigForServiceAccount(namespace, 'gpugate-operator');
    });

    it('authenticates as system:serviceaccount:<namespace>:<name>', async () => {
      const review = JSON.parse(
        await kubectl(['auth', 'whoami', '-o', 'json'], { kubeconfig: operatorKubeconfig }),
      ) as { status: { userInfo: { username: string; groups: string[] } } };
      expect(review.status.userInfo.username).toBe(`system:serviceaccount:${namespace}:gpugate-operator`);
      expect(review.status.userInfo.groups).toContain('system:serviceaccounts');
    });

    it('is forbidden until RBAC grants it access, then allowed', async () => {
      const listSecrets = ['get', 'secrets', '-n', namespace];
      await expect(kubectl(listSecrets, { kubeconfig: operatorKubeconfig })).rejects.toThrow(
        /secrets is forbidden: User "system:serviceaccount:[^"]+:gpugate-operator" cannot list resource "secrets"/,
      );
      await kubectl([
        'create',
        'role',
        'read-secrets',
        '-n',
        namespace,
        '--verb=get,list',
        '--resource=secrets',
      ]);
      await kubectl([
        'create',
        'rolebinding',
        'read-secrets',
        '-n',
        namespace,
        '--role=read-secrets',
        `--serviceaccount=${namespace}:gpugate-operator`,
      ]);
      await expect(kubectl(listSecrets, { kubeconfig: operatorKubeconfig })).resolves.toBeTypeOf('string');
    });
  });
});
