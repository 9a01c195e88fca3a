// Chart tier: helm lint and template, every rendered object accepted by the real API server (server-side
// dry-run), the values schema, a real install and upgrade keeping the generated push token, the operator's
// RBAC coming from its own generated rules.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { kubectl, newNamespace, waitEstablished } from '../cluster/harness.ts';
import { CLUSTER_RULES, NAMESPACE_RULES } from '../../operator/rbac/rules.ts';
import { CHART, helm, renderChart, type K8sObject } from './helm.ts';

const ALL_OPTIONS = join(import.meta.dirname, 'all-options.values.yaml');
const MONITORING_CRDS = readFileSync(join(import.meta.dirname, 'monitoring-crds.yaml'), 'utf8');

const byKind = (objects: K8sObject[], kind: string): K8sObject[] => objects.filter((o) => o.kind === kind);
const one = (objects: K8sObject[], kind: string, nameSuffix = ''): K8sObject => {
  const found = objects.filter((o) => o.kind === kind && o.metadata.name.endsWith(nameSuffix));
  expect(found, `${kind} *${nameSuffix}`).toHaveLength(1);
  return found[0]!;
};
type Pod = {
  securityContext: Record<string, unknown>;
  containers: {
    name: string;
    securityContext: Record<string, unknown>;
    resources: Record<string, unknown>;
    livenessProbe?: unknown;
    readinessProbe?: unknown;
    env?: { name: string; value?: string }[];
  }[];
};
const podOf = (o: K8sObject): Pod => (o.spec as { template: { spec: Pod } }).template.spec;

async function dryRun(namespace: string, text: string): Promise<string> {
  return kubectl(
    ['apply', '--server-side', '--dry-run=server', '--field-manager=helm', '-n', namespace, '-f', '-'],
    {
      input: text,
    },
  );
}

describe('chart', () => {
  let ns: string;
  beforeAll(async () => {
    ns = await newNamespace('chart');
    // The chart's own CRDs and the monitoring stand-ins, for real: dry-runs of objects of those kinds need them.
    const crds = parseAllDocuments(
      ['apikeys', 'gpubackends', 'tenants']
        .map((k) => readFileSync(join(CHART, 'crds', `${k}.gpugate.io.yaml`), 'utf8'))
        .join('\n---\n'),
    );
    await kubectl(['apply', '--server-side', '-f', '-'], {
      input: crds.map(String).join('---\n') + '---\n' + MONITORING_CRDS,
    });
    await waitEstablished(['servicemonitors.monitoring.coreos.com', 'prometheusrules.monitoring.coreos.com']);
  });

  it('passes helm lint with default values and with every option set', async () => {
    const plain = await helm(['lint', CHART, '--strict']);
    expect(plain).toContain('0 chart(s) failed');
    const all = await helm(['lint', CHART, '--strict', '-f', ALL_OPTIONS]);
    expect(all).toContain('0 chart(s) failed');
  });

  it('renders the defaults: hardened pods, probes, resources, HPA, PDB, no monitoring objects without the Prometheus Operator', async () => {
    const { objects } = await renderChart({ namespace: ns });
    const kinds = new Set(objects.map((o) => o.kind));
    for (const k of [
      'Deployment',
      'Service',
      'ServiceAccount',
      'ClusterRole',
      'Role',
      'Secret',
      'HorizontalPodAutoscaler',
      'PodDisruptionBudget',
      'NetworkPolicy',
      'ConfigMap',
    ])
      expect(kinds, k).toContain(k);
    expect(kinds).not.toContain('ServiceMonitor');
    expect(kinds).not.toContain('PrometheusRule');
    expect(kinds).not.toContain('Ingress');
    expect(kinds).not.toContain('StatefulSet');
    const operator = one(objects, 'Deployment', '-operator');
    expect((operator.spec as { replicas: number }).replicas).toBe(2);
    for (const d of byKind(objects, 'Deployment')) {
      const pod = podOf(d);
      expect(pod.securityContext).toMatchObject({
        runAsNonRoot: true,
        seccompProfile: { type: 'RuntimeDefault' },
      });
      for (const c of pod.containers) {
        expect(c.securityContext).toMatchObject({
          readOnlyRootFilesystem: true,
          allowPrivilegeEscalation: false,
          capabilities: { drop: ['ALL'] },
        });
        expect(c.resources).toHaveProperty('requests');
        expect(c.livenessProbe).toBeDefined();
        expect(c.readinessProbe).toBeDefined();
      }
    }
    // Four dashboards, labelled for the Grafana sidecar, each valid JSON.
    const dashboards = byKind(objects, 'ConfigMap').filter(
      (c) => c.metadata.labels?.grafana_dashboard === '1',
    );
    expect(dashboards.map((d) => d.metadata.name).sort()).toEqual(
      ['backends', 'control-plane', 'overview', 'tenants'].map((n) => `gpugate-dashboard-${n}`),
    );
    for (const d of dashboards)
      for (const json of Object.values(d.data as Record<string, string>))
        expect(() => JSON.parse(json)).not.toThrow();
  });

  it('renders every option from a values file that sets each of them', async () => {
    const { objects } = await renderChart({ namespace: ns, values: [ALL_OPTIONS], monitoring: true });
    const kinds = new Set(objects.map((o) => o.kind));
    for (const k of ['Ingress', 'StatefulSet', 'ServiceMonitor', 'PrometheusRule'])
      expect(kinds, k).toContain(k);
    expect(kinds).not.toContain('HorizontalPodAutoscaler');
    const ingress = one(objects, 'Ingress');
    expect(ingress.metadata.annotations).toMatchObject({ 'cert-manager.io/cluster-issuer': 'letsencrypt' });
    expect(ingress.spec).toMatchObject({
      ingressClassName: 'nginx',
      tls: [{ secretName: 'gpu-example-tls' }],
    });
    expect(one(objects, 'PodDisruptionBudget').spec).toMatchObject({ maxUnavailable: 1 });
    const dp = one(objects, 'Deployment', '-dataplane');
    expect((dp.spec as { replicas: number }).replicas).toBe(4);
    const env = Object.fromEntries((podOf(dp).containers[0]!.env ?? []).map((e) => [e.name, e]));
    expect(env.DATABASE_URL).toMatchObject({
      valueFrom: { secretKeyRef: { name: 'gpugate-full-postgres', key: 'url' } },
    });
    expect(env.GPUGATE_INSTANCE_ID?.value).toBe('edge-gateway');
    expect(env.GPUGATE_USAGE_RETENTION_DAYS?.value).toBe('30');
    expect(env.GPUGATE_ACCESS_LOG_LEVEL?.value).toBe('warn');
    expect(env.GPUGATE_ACCESS_LOG_SAMPLE?.value).toBe('0.25');
    expect(env.GPUGATE_OTLP_ENDPOINT?.value).toBe('http://otel-collector.observability:4318/v1/traces');
    expect(env.GPUGATE_TRACE_SAMPLE?.value).toBe('0.1');
    expect(env.GPUGATE_WARMUP_REQUESTS?.value).toBe('5000');
    expect(env.GPUGATE_WARMUP_BUDGET_MS?.value).toBe('4000');
    expect(env.GPUGATE_OTLP_HEADERS).toMatchObject({
      valueFrom: { secretKeyRef: { name: 'otel-auth', key: 'headers' } },
    });
    const rule = one(objects, 'PrometheusRule');
    expect(JSON.stringify(rule)).toContain('runbooks.example.com/gpugate#gpugatehigherrorratio');
    expect(JSON.stringify(rule)).toContain('le=\\"10\\"');
    expect(byKind(objects, 'NetworkPolicy')).toHaveLength(3);
    const opEnv = Object.fromEntries(
      (podOf(one(objects, 'Deployment', '-operator')).containers[0]!.env ?? []).map((e) => [e.name, e]),
    );
    expect(opEnv.GPUGATE_GATEWAY_ADMINS?.value).toBe(
      'http://regional-gw.example:8080=http://regional-gw-admin.example:9090,https://eu-gw.example=http://eu-gw-admin.example:9090',
    );
    expect(opEnv.GPUGATE_TRUSTED_PROXIES?.value).toBe('10.244.0.0/16,fd00::/64');
    expect(opEnv.GPUGATE_GATEWAY_ADMIN_TOKEN).toMatchObject({
      valueFrom: { secretKeyRef: { name: 'chained-push-token', key: 'token' } },
    });
    const adminPolicy = byKind(objects, 'NetworkPolicy').find((o) => o.metadata.name.endsWith('-dataplane'));
    expect(JSON.stringify(adminPolicy)).toContain('edge-gpugate');
  });

  it('has every rendered object accepted by the API server (server-side dry-run), defaults and every option', async () => {
    for (const values of [[], [ALL_OPTIONS]]) {
      const { text, objects } = await renderChart({ namespace: ns, values, monitoring: true });
      const out = await dryRun(ns, text);
      // One "serverside-applied (server dry run)" line per object.
      expect(
        out
          .trim()
          .split('\n')
          .filter((l) => l.includes('(server dry run)')),
      ).toHaveLength(objects.length);
    }
  });

  it('refuses a misspelled key through values.schema.json', async () => {
    await expect(
      renderChart({ namespace: ns, set: ['dataplane.autoscalling.enabled=false'] }),
    ).rejects.toThrow(/additional properties 'autoscalling' not allowed/);
    await expect(renderChart({ namespace: ns, set: ['ingres.enabled=true'] })).rejects.toThrow(
      /'ingres' not allowed/,
    );
    await expect(renderChart({ namespace: ns, set: ['logLevel=verbose'] })).rejects.toThrow(/logLevel/);
    await expect(renderChart({ namespace: ns, set: ['metering.usageRetentionDays=-1'] })).rejects.toThrow(
      /usageRetentionDays/,
    );
  });

  it('binds the operator to exactly the rules of operator/rbac/rules.ts', async () => {
    const { objects } = await renderChart({ namespace: ns });
    expect(one(objects, 'ClusterRole').rules).toEqual(CLUSTER_RULES);
    expect(one(objects, 'Role').rules).toEqual(NAMESPACE_RULES);
    const binding = one(objects, 'ClusterRoleBinding');
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: 'gpugate-operator', namespace: ns }]);
  });

  it('keeps the generated push token across helm upgrade (lookup), and installs for real', async () => {
    const release = await newNamespace('chart-install');
    await helm(['install', 'gpugate', CHART, '-n', release, '--set', 'dataplane.autoscaling.enabled=false']);
    const token = async (): Promise<string> =>
      kubectl(['get', 'secret', 'gpugate-push-token', '-n', release, '-o', 'jsonpath={.data.token}']);
    const first = await token();
    expect(Buffer.from(first, 'base64').toString()).toMatch(/^[A-Za-z0-9]{48}$/);
    await helm([
      'upgrade',
      'gpugate',
      CHART,
      '-n',
      release,
      '--set',
      'dataplane.autoscaling.enabled=false',
      '--set',
      'logLevel=debug',
    ]);
    expect(await token()).toBe(first);
    const deployments = await kubectl(['get', 'deployments', '-n', release, '-o', 'name']);
    expect(deployments.trim().split('\n').sort()).toEqual([
      'deployment.apps/gpugate-dataplane',
      'deployment.apps/gpugate-operator',
    ]);
  });
});
