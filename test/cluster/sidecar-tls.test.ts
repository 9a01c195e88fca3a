// deployment.sidecarTLS on the real control plane: the operator (a process with its own service account)
// injects the sidecar data plane with the named kubernetes.io/tls Secret mounted and the TLS flags set, and
// the Service says https on the sidecar's port. kwok pods run no code, so the sidecar container's own
// command line (Secret mount mapped to a folder holding an openssl-made pair, as the kubelet would project
// it) then starts a real data-plane process, which must present that certificate to a verifying client.
import { X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeCa, makeServerCert, presentedCertificate, type TestCa } from '../fixtures/certs.ts';
import { startProcess, type Proc } from '../fixtures/processes.ts';
import { kubectl, waitUntil } from './harness.ts';
import type { Condition } from '../../operator/api/v1alpha1/common.ts';
import { condition, getJson, operatorNamespace, startOperatorProcess } from './operator-helpers.ts';

const TOKEN = 'sidecar-tls-push-token';

interface Container {
  name: string;
  command?: string[];
  args: string[];
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}
interface DeploymentJson {
  spec: {
    template: {
      spec: {
        containers: Container[];
        volumes: { name: string; secret?: { secretName: string; items?: { key: string; path: string }[] } }[];
      };
    };
  };
}

interface BackendJson {
  metadata: { generation: number };
  status?: { conditions?: Condition[] };
}

describe('sidecar data plane with TLS', () => {
  let ns: string;
  let operator: Proc & { url: string };
  let dir: string;
  let ca: TestCa;
  let pair: { cert: string; key: string };
  /** A kubernetes.io/tls Secret holding `pair` (the openssl-made server certificate and its key). */
  const createTlsSecret = (name: string) =>
    kubectl([
      'create',
      'secret',
      'tls',
      name,
      '-n',
      ns,
      `--cert=${join(dir, 'sidecar-server.crt')}`,
      `--key=${join(dir, 'sidecar-server.key')}`,
    ]);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gpugate-sidecar-tls-'));
    ca = await makeCa(dir, 'sidecar-ca');
    pair = await makeServerCert(ca, 'sidecar-server');
    let kubeconfig: string;
    ({ ns, kubeconfig } = await operatorNamespace('sidecar-tls', TOKEN));
    await createTlsSecret('gpu-tls');
    operator = await startOperatorProcess({
      ns,
      kubeconfig,
      extra: ['--sidecar-image', 'gpugate/gpugate:test'],
    });
    await operator.waitFor('caches synced');
  });
  afterAll(async () => {
    await operator?.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it('mounts the Secret into the sidecar, passes the TLS flags, and the sidecar command serves that certificate', async () => {
    await kubectl(['apply', '-n', ns, '-f', '-'], {
      input: `
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: secure}
spec:
  deployment:
    image: vllm/vllm-openai:v0.11.0
    dataplane: sidecar
    sidecarTLS: {secretName: gpu-tls}
`,
    });
    const dep = await waitUntil('Deployment secure-gpugate', () =>
      getJson<DeploymentJson>(['get', 'deployment', 'secure-gpugate', '-n', ns]),
    );
    const pod = dep.spec.template.spec;
    // Default mode (0644): the pod has no fsGroup, and the sidecar runs as the image's non-root user.
    // Only the sidecar container mounts it.
    expect(pod.volumes.find((v) => v.name === 'gpugate-tls')?.secret).toMatchObject({
      secretName: 'gpu-tls',
      items: [
        { key: 'tls.crt', path: 'tls.crt' },
        { key: 'tls.key', path: 'tls.key' },
      ],
    });
    const sidecar = pod.containers.find((c) => c.name === 'gpugate')!;
    const mount = sidecar.volumeMounts!.find((m) => m.name === 'gpugate-tls')!;
    const model = pod.containers.find((c) => c.name === 'model')!;
    expect((model.volumeMounts ?? []).map((m) => m.name)).not.toContain('gpugate-tls');
    expect(mount.readOnly).toBe(true);
    const svc = await getJson<{ spec: { ports: { name: string; appProtocol?: string }[] } }>([
      'get',
      'service',
      'secure-gpugate',
      '-n',
      ns,
    ]);
    expect(svc.spec.ports.find((p) => p.name === 'gpugate')?.appProtocol).toBe('https');

    // The sidecar's command line, with the Secret projected into a local folder and loopback ports.
    const projected = join(dir, 'projected');
    mkdirSync(projected);
    writeFileSync(join(projected, 'tls.crt'), pair.cert);
    writeFileSync(join(projected, 'tls.key'), pair.key);
    writeFileSync(join(dir, 'token'), TOKEN);
    // command: node and its flags; args: the script and its flags.
    const [node, ...nodeFlags] = sidecar.command ?? [];
    expect(node).toBe('node');
    const [script, ...flags] = sidecar.args;
    const args = flags.map((a) => {
      const [flag, value] = a.split('=', 2) as [string, string];
      if (flag === '--port' || flag === '--admin-port') return `${flag}=0`;
      if (flag === '--push-token-file') return `${flag}=${join(dir, 'token')}`;
      if (value?.startsWith(`${mount.mountPath}/`))
        return `${flag}=${join(projected, value.slice(mount.mountPath.length + 1))}`;
      return a;
    });
    expect(args).toEqual(
      expect.arrayContaining([
        `--tls-cert-file=${join(projected, 'tls.crt')}`,
        `--tls-key-file=${join(projected, 'tls.key')}`,
      ]),
    );
    const p = startProcess(script!, ['--host=127.0.0.1', '--admin-host=127.0.0.1', ...args], {}, nodeFlags);
    try {
      const listening = await p.waitFor('data plane listening');
      const url = listening.url as string;
      expect(url).toMatch(/^https:\/\//);
      const fingerprint = await presentedCertificate(Number(new URL(url).port), [ca.pem]);
      expect(fingerprint).toBe(new X509Certificate(pair.cert).fingerprint256);
    } finally {
      await p.kill();
    }
  });

  it('a missing sidecarTLS Secret, or one without tls.key, is a condition on the GpuBackend that clears when the Secret is complete', async () => {
    const backend = () => getJson<BackendJson>(['get', 'gpubackend', 'later', '-n', ns]);
    await kubectl(['apply', '-n', ns, '-f', '-'], {
      input: `
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: later}
spec:
  deployment:
    image: vllm/vllm-openai:v0.11.0
    dataplane: sidecar
    sidecarTLS: {secretName: later-tls}
`,
    });
    const missing = await waitUntil('ResolvedRefs=False SecretNotFound', async () => {
      const o = await backend();
      return condition(o, 'ResolvedRefs')?.reason === 'SecretNotFound' && o;
    });
    const refs = condition(missing, 'ResolvedRefs')!;
    expect(refs).toMatchObject({ status: 'False', observedGeneration: missing.metadata.generation });
    expect(refs.message).toContain(`deployment.sidecarTLS: Secret ${ns}/later-tls not found`);
    // The Deployment is still applied: the pods start once the Secret is there.
    await getJson(['get', 'deployment', 'later-gpugate', '-n', ns]);

    // A Secret with the certificate only: the key is named as missing, and nothing of the Secret is shown.
    await kubectl([
      'create',
      'secret',
      'generic',
      'later-tls',
      '-n',
      ns,
      `--from-file=tls.crt=${join(dir, 'sidecar-server.crt')}`,
    ]);
    const partial = await waitUntil('ResolvedRefs=False SecretKeyNotFound', async () => {
      const o = await backend();
      return condition(o, 'ResolvedRefs')?.reason === 'SecretKeyNotFound' && o;
    });
    const keyMissing = condition(partial, 'ResolvedRefs')!;
    expect(keyMissing.status).toBe('False');
    expect(keyMissing.message).toContain(`Secret ${ns}/later-tls has no "tls.key"`);
    expect(keyMissing.message).not.toContain('"tls.crt"');
    const crtBase64 = Buffer.from(pair.cert).toString('base64');
    for (const c of partial.status?.conditions ?? []) {
      expect(c.message).not.toContain(crtBase64.slice(0, 40));
      expect(c.message).not.toContain('BEGIN CERTIFICATE');
    }

    await kubectl(['delete', 'secret', 'later-tls', '-n', ns]);
    await createTlsSecret('later-tls');
    const resolved = await waitUntil('ResolvedRefs=True once the Secret is complete', async () => {
      const o = await backend();
      return condition(o, 'ResolvedRefs')?.status === 'True' && o;
    });
    expect(condition(resolved, 'ResolvedRefs')).toMatchObject({ reason: 'Resolved' });
    expect(condition(resolved, 'Ready')?.message).not.toContain('sidecarTLS');
  });

  it('without sidecarTLS the sidecar gets no TLS mount or flags', async () => {
    await kubectl(['apply', '-n', ns, '-f', '-'], {
      input: `
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: plain}
spec:
  deployment: {image: vllm/vllm-openai:v0.11.0, dataplane: sidecar}
`,
    });
    const dep = await waitUntil('Deployment plain-gpugate', () =>
      getJson<DeploymentJson>(['get', 'deployment', 'plain-gpugate', '-n', ns]),
    );
    const sidecar = dep.spec.template.spec.containers.find((c) => c.name === 'gpugate')!;
    expect(sidecar.args.join(' ')).not.toContain('--tls-');
    expect(dep.spec.template.spec.volumes.map((v) => v.name)).toEqual(['gpugate-push-token']);
  });
});
