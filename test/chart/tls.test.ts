// The chart's data-plane TLS (values dataplane.tls.secretName): the Secret is mounted and the data plane
// is pointed at it; then the rendered container environment (mount paths mapped to a folder holding a pair
// made with openssl, as the kubelet would project the Secret) starts a real data-plane process, which must
// serve HTTPS that a client verifies against the test CA. kwok pods run no code, so the process runs here.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeCa, makeServerCert, presentedCertificate, type TestCa } from '../fixtures/certs.ts';
import { startDataPlaneProcess } from '../fixtures/processes.ts';
import { renderChart, type K8sObject } from './helm.ts';

interface Container {
  name: string;
  env?: { name: string; value?: string }[];
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}
interface PodSpec {
  containers: Container[];
  volumes: { name: string; secret?: { secretName: string; items?: { key: string; path: string }[] } }[];
}

const dataplane = (objects: K8sObject[]) =>
  objects.find((o) => o.kind === 'Deployment' && o.metadata.name.endsWith('dataplane')) as
    (K8sObject & { spec: { template: { spec: PodSpec } } }) | undefined;

describe('chart: data-plane TLS from a Secret', () => {
  let dir: string;
  let ca: TestCa;
  let pair: { cert: string; key: string };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gpugate-chart-tls-'));
    ca = await makeCa(dir, 'chart-ca');
    pair = await makeServerCert(ca, 'chart-server');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('without tls.secretName: no TLS mount, no TLS environment, the Service says http', async () => {
    const { objects } = await renderChart({ namespace: 'tls-off' });
    const pod = dataplane(objects)!.spec.template.spec;
    expect(pod.volumes.map((v) => v.name)).not.toContain('tls');
    expect(pod.containers[0]!.env!.map((e) => e.name)).not.toContain('GPUGATE_TLS_CERT_FILE');
    const svc = objects.find(
      (o) => o.kind === 'Service' && o.metadata.name.endsWith('dataplane'),
    ) as K8sObject & {
      spec: { ports: { appProtocol?: string }[] };
    };
    expect(svc.spec.ports[0]!.appProtocol).toBe('http');
  });

  it("with tls.secretName the rendered pod serves HTTPS with the Secret's pair", async () => {
    const { objects } = await renderChart({
      namespace: 'tls-on',
      set: ['dataplane.tls.secretName=gpugate-dataplane-tls', 'dataplane.tls.reloadSeconds=5'],
    });
    const pod = dataplane(objects)!.spec.template.spec;
    const volume = pod.volumes.find((v) => v.name === 'tls');
    expect(volume?.secret).toMatchObject({
      secretName: 'gpugate-dataplane-tls',
      items: [
        { key: 'tls.crt', path: 'tls.crt' },
        { key: 'tls.key', path: 'tls.key' },
      ],
    });
    const container = pod.containers.find((c) => c.name === 'dataplane')!;
    const mount = container.volumeMounts!.find((m) => m.name === 'tls')!;
    expect(mount.readOnly).toBe(true);
    const env = Object.fromEntries(
      container.env!.filter((e) => e.value !== undefined).map((e) => [e.name, e.value!]),
    );
    expect(env.GPUGATE_TLS_RELOAD_MS).toBe('5000');
    const svc = objects.find(
      (o) => o.kind === 'Service' && o.metadata.name.endsWith('dataplane'),
    ) as K8sObject & {
      spec: { ports: { appProtocol?: string }[] };
    };
    expect(svc.spec.ports[0]!.appProtocol).toBe('https');

    // Project the Secret as the kubelet would: its items under the mount path.
    const projected = join(dir, 'projected');
    mkdirSync(projected);
    writeFileSync(join(projected, 'tls.crt'), pair.cert);
    writeFileSync(join(projected, 'tls.key'), pair.key);
    const local = (path: string) => {
      expect(path.startsWith(`${mount.mountPath}/`), `${path} is under ${mount.mountPath}`).toBe(true);
      return join(projected, path.slice(mount.mountPath.length + 1));
    };
    const p = await startDataPlaneProcess({
      token: 'push-token-for-tests',
      env: {
        GPUGATE_TLS_CERT_FILE: local(env.GPUGATE_TLS_CERT_FILE!),
        GPUGATE_TLS_KEY_FILE: local(env.GPUGATE_TLS_KEY_FILE!),
        GPUGATE_TLS_RELOAD_MS: env.GPUGATE_TLS_RELOAD_MS!,
      },
    });
    try {
      expect(p.url).toMatch(/^https:\/\//);
      const fingerprint = await presentedCertificate(Number(new URL(p.url).port), [ca.pem]);
      expect(fingerprint).toBe(new X509Certificate(pair.cert).fingerprint256);
    } finally {
      await p.kill();
    }
  });
});
