// GpuBackend → (with spec.deployment) a Deployment of the model server on GPU nodes and a Service in
// front of it, both owned by the GpuBackend and written with server-side apply; status from the
// compiler's problems, the Service's EndpointSlices and the pods' scheduling conditions.
import type { TSchema } from 'typebox';
import { Value } from 'typebox/value';
import { DATAPLANE_NODE_FLAGS } from '../../dataplane/node-flags.ts';
import {
  API_VERSION,
  DEFAULT_GPU_RESOURCE,
  GpuBackendSpec,
  type GpuBackend,
  type GpuBackendStatus,
} from '../api/v1alpha1/index.ts';
import type { DiscoveredEndpoint } from '../snapshot/compile.ts';
import { paths, type KubeObject } from '../kube/client.ts';
import { problemCondition, setConditions, writeStatus, type ConditionInput } from './status.ts';
import {
  BACKEND_LABEL,
  DONE,
  MANAGED_BY,
  TerminalError,
  type Caches,
  type ControllerContext,
  type EndpointSlice,
  type Key,
  type Outcome,
  type Reconciler,
} from './types.ts';

type DeploymentSpec = NonNullable<GpuBackend['spec']['deployment']>;

/** Name of the Deployment and Service of a managed backend. */
export function childName(backendName: string): string {
  return `${backendName}-gpugate`;
}

/** Sidecar data plane: container name and ports inside a managed pod. */
export const SIDECAR = {
  name: 'gpugate',
  port: 8080,
  adminPort: 9090,
  /** Where deployment.sidecarTLS's Secret is mounted. */
  tlsDir: '/var/run/gpugate-tls',
} as const;

export interface SidecarSettings {
  image: string;
  /** Secret (same namespace as the backend) holding the push token, key `token`. */
  pushTokenSecret: string;
}

export function gpuBackendReconciler(ctx: ControllerContext, sidecar: SidecarSettings | null): Reconciler {
  const applied: AppliedBodies = new Map();
  return {
    kind: 'GpuBackend',
    async reconcile(key: Key): Promise<Outcome> {
      const obj = ctx.caches.gpuBackends.get(key.name, key.namespace);
      if (!obj || obj.metadata.deletionTimestamp) {
        for (const path of Object.values(childPaths(key.namespace, key.name))) applied.delete(path);
        return DONE;
      }
      return sync(ctx, obj as GpuBackend & KubeObject, sidecar, applied);
    },
  };
}

/** The body (JSON) of the last successful apply of each child, by its API path. */
type AppliedBodies = Map<string, string>;

function childPaths(namespace: string, backendName: string): { deployment: string; service: string } {
  return {
    deployment: paths.group('apps', 'v1', 'deployments', namespace, childName(backendName)),
    service: paths.core('services', namespace, childName(backendName)),
  };
}

/**
 * Server-side applies a child unless the apply would change nothing: this body is the one applied last,
 * and the cached child still holds every value of it (not deleted, no field set otherwise since). Pod,
 * EndpointSlice and child events reconcile the backend for its status, and without this each cost two
 * PATCHes. A changed body is always applied, so fields the new body leaves out are removed as before.
 */
async function applyChild(
  ctx: ControllerContext,
  applied: AppliedBodies,
  cache: Caches['backendDeployments'],
  path: string,
  body: KubeObject,
): Promise<void> {
  const text = JSON.stringify(body);
  const cached = cache.get(body.metadata!.name!, body.metadata!.namespace);
  if (applied.get(path) === text && cached && holds(cached, body)) return;
  await ctx.client.apply(path, body);
  applied.set(path, text);
}

/**
 * Whether `actual` has every value of `wanted` (objects: its keys; lists: same length, item by item). An empty
 * list or map is held by an absent field: the API server does not keep them (omitempty).
 */
function holds(actual: unknown, wanted: unknown): boolean {
  if (typeof wanted !== 'object' || wanted === null) return actual === wanted;
  if (actual === undefined) return Object.keys(wanted).length === 0;
  if (Array.isArray(wanted)) {
    return (
      Array.isArray(actual) && actual.length === wanted.length && wanted.every((w, k) => holds(actual[k], w))
    );
  }
  if (typeof actual !== 'object' || actual === null) return false;
  return Object.entries(wanted).every(([k, w]) => holds((actual as Record<string, unknown>)[k], w));
}

function defaultedDeployment(obj: GpuBackend): DeploymentSpec | undefined {
  if (!obj.spec.deployment) return undefined;
  const schema = (GpuBackendSpec as unknown as { properties: Record<string, TSchema> }).properties
    .deployment!;
  return Value.Default(schema, Value.Clone(obj.spec.deployment)) as DeploymentSpec;
}

async function sync(
  ctx: ControllerContext,
  obj: GpuBackend & KubeObject,
  sidecar: SidecarSettings | null,
  applied: AppliedBodies,
): Promise<Outcome> {
  const { namespace = 'default', name } = obj.metadata;
  const dep = defaultedDeployment(obj);
  const conditions: ConditionInput[] = [];
  const now = ctx.now();
  let tlsProblem: SidecarTlsProblem | undefined;
  let sidecarMissing = false;
  if (dep) {
    if (childName(name).length > 63) {
      throw new TerminalError(
        `GpuBackend ${namespace}/${name}: name too long for a Service (max 55 characters)`,
      );
    }
    const owner = {
      apiVersion: API_VERSION,
      kind: 'GpuBackend',
      name,
      uid: obj.metadata.uid!,
      controller: true,
      blockOwnerDeletion: true,
    };
    const sidecarOn = dep.dataplane === 'sidecar' && sidecar !== null;
    // The model server still runs and the shared data plane still routes to it; only the sidecar is absent.
    sidecarMissing = dep.dataplane === 'sidecar' && sidecar === null;
    if (sidecarOn && dep.sidecarTLS) tlsProblem = sidecarTlsProblem(ctx.caches, namespace, dep.sidecarTLS);
    const path = childPaths(namespace, name);
    await applyChild(
      ctx,
      applied,
      ctx.caches.backendDeployments,
      path.deployment,
      deploymentFor(obj, dep, owner, sidecarOn ? sidecar : null),
    );
    await applyChild(
      ctx,
      applied,
      ctx.caches.backendServices,
      path.service,
      serviceFor(obj, dep, owner, sidecarOn),
    );
  }

  const problems = ctx.problemsOf('GpuBackend', { namespace, name });
  const statics = (obj.spec.endpoints ?? []).map((e) => ({
    url: e.url,
    source: 'static' as const,
    ready: !e.disabled,
    ...(e.disabled ? { reason: 'disabled' } : {}),
  }));
  const discovered = [
    ...(dep ? podEndpoints(ctx.caches, namespace, name, dep.port) : []),
    ...(obj.spec.registration
      ? (ctx.registeredEndpoints?.({ namespace, name }) ?? []).map((e) => ({
          url: e.url,
          source: 'registered' as const,
          ready: e.ready,
        }))
      : []),
  ];
  const endpoints = [...statics, ...discovered.filter((d) => !statics.some((s) => s.url === d.url))];
  const ready = endpoints.filter((e) => e.ready).length;
  const total = Math.max(endpoints.length, dep ? dep.replicas : 0);

  if (problems.length > 0) {
    const p = problems[0]!;
    conditions.push(problemCondition('ResolvedRefs', p));
    conditions.push(problemCondition('Ready', p));
  } else if (tlsProblem) {
    conditions.push({ type: 'ResolvedRefs', status: 'False', ...tlsProblem });
    // Pods started before the Secret went away keep serving; new ones cannot start.
    conditions.push(
      ready === 0
        ? { type: 'Ready', status: 'False', ...tlsProblem }
        : {
            type: 'Ready',
            status: 'True',
            reason: 'EndpointsReady',
            message: `${ready} of ${total} endpoints ready; new pods cannot start: ${tlsProblem.message}`,
          },
    );
  } else {
    conditions.push({
      type: 'ResolvedRefs',
      status: 'True',
      reason: 'Resolved',
      message: 'every reference resolved',
    });
    const unschedulable = dep ? unschedulableMessage(ctx.caches, namespace, name) : undefined;
    if (sidecarMissing) {
      conditions.push({
        type: 'Ready',
        status: 'False',
        reason: 'SidecarImageNotSet',
        message: sidecarImageMessage(ready, total),
      });
    } else if (ready > 0) {
      conditions.push({
        type: 'Ready',
        status: 'True',
        reason: 'EndpointsReady',
        message: `${ready} of ${total} endpoints ready${unschedulable ? `; some pods are Pending: ${unschedulable}` : ''}`,
      });
    } else if (unschedulable) {
      conditions.push({
        type: 'Ready',
        status: 'False',
        reason: 'Unschedulable',
        message: `no pod could be scheduled: ${unschedulable}`,
      });
    } else if (total === 0 && !obj.spec.registration) {
      conditions.push({ type: 'Ready', status: 'False', reason: 'NoEndpoints', message: 'no endpoints' });
    } else {
      conditions.push({
        type: 'Ready',
        status: 'False',
        reason: 'NoReadyEndpoints',
        message: dep ? `0 of ${total} model-server pods ready` : 'no endpoint is ready',
      });
    }
  }
  const models = obj.spec.models ?? ['*'];
  const status: GpuBackendStatus = {
    observedGeneration: obj.metadata.generation ?? 0,
    conditions: setConditions(obj.status?.conditions, conditions, obj.metadata.generation, now),
    endpoints: endpoints.slice(0, 1024),
    readyEndpoints: `${ready}/${total}`,
    modelList: models.join(','),
  };
  await writeStatus(ctx.client, 'gpubackends', obj, status);
  return DONE;
}

/**
 * Ready's message for `dataplane: sidecar` on an operator started without a sidecar image: what is missing,
 * what runs instead, and the flag and chart value that set it.
 */
function sidecarImageMessage(ready: number, total: number): string {
  return (
    'deployment.dataplane is sidecar, but the operator has no sidecar image, so the pods run without the ' +
    `gpugate container and the Service has no gpugate port (${ready} of ${total} model-server endpoints ready, ` +
    'reachable through the shared data plane only); start the operator with --sidecar-image=<image> ' +
    '(env GPUGATE_SIDECAR_IMAGE; the Helm chart sets it from image.repository and image.tag), ' +
    'or set deployment.dataplane: shared'
  );
}

type SidecarTlsProblem = { reason: 'SecretNotFound' | 'SecretKeyNotFound'; message: string };

/** The Secret files the sidecar mounts from deployment.sidecarTLS (deploymentFor). */
const SIDECAR_TLS_KEYS = ['tls.crt', 'tls.key'] as const;

/**
 * Why the sidecar's TLS Secret cannot be mounted, if it cannot: the kubelet refuses to start a pod whose
 * Secret volume or one of its listed keys is missing, and the pod only shows it in its events. Names the
 * Secret and the missing keys, never the Secret's data.
 */
function sidecarTlsProblem(
  caches: Pick<Caches, 'secrets'>,
  namespace: string,
  tls: NonNullable<DeploymentSpec['sidecarTLS']>,
): SidecarTlsProblem | undefined {
  const id = `${namespace}/${tls.secretName}`;
  const secret = caches.secrets.get(tls.secretName, namespace);
  if (!secret) {
    return {
      reason: 'SecretNotFound',
      message: `deployment.sidecarTLS: Secret ${id} not found; the sidecar mounts its tls.crt and tls.key, so pods cannot start until it exists (kubectl create secret tls ${tls.secretName} -n ${namespace} --cert=... --key=...)`,
    };
  }
  const missing = SIDECAR_TLS_KEYS.filter((k) => !secret.data?.[k]);
  if (missing.length === 0) return undefined;
  return {
    reason: 'SecretKeyNotFound',
    message: `deployment.sidecarTLS: Secret ${id} has no ${missing.map((k) => JSON.stringify(k)).join(' and ')}; the sidecar mounts tls.crt and tls.key (a kubernetes.io/tls Secret has both), so pods cannot start until it does`,
  };
}

/** Ready addresses of the backend Service's EndpointSlices, as model-server URLs. */
export function podEndpoints(
  caches: Pick<Caches, 'backendSlices'>,
  namespace: string,
  backendName: string,
  port: number,
): (DiscoveredEndpoint & { source: 'pod'; reason?: string })[] {
  const out = new Map<string, DiscoveredEndpoint & { source: 'pod'; reason?: string }>();
  for (const slice of slicesOf(caches, namespace, childName(backendName))) {
    const slicePort = slice.ports?.find((p) => p.name === 'http')?.port ?? port;
    for (const e of slice.endpoints ?? []) {
      const address = e.addresses[0];
      if (!address) continue;
      const host = slice.addressType === 'IPv6' ? `[${address}]` : address;
      const ready = e.conditions?.ready !== false;
      out.set(`http://${host}:${slicePort}`, {
        url: `http://${host}:${slicePort}`,
        source: 'pod',
        ready,
        ...(ready ? {} : { reason: 'pod not ready' }),
      });
    }
  }
  return [...out.values()].sort((a, b) => a.url.localeCompare(b.url));
}

export function slicesOf(
  caches: Pick<Caches, 'backendSlices'>,
  namespace: string,
  serviceName: string,
): EndpointSlice[] {
  return caches.backendSlices
    .list(namespace)
    .filter((s) => s.metadata?.labels?.['kubernetes.io/service-name'] === serviceName);
}

function unschedulableMessage(caches: Caches, namespace: string, backendName: string): string | undefined {
  for (const pod of caches.backendPods.list(namespace)) {
    if (pod.metadata?.labels?.[BACKEND_LABEL] !== backendName) continue;
    if (pod.metadata.deletionTimestamp || pod.status?.phase !== 'Pending') continue;
    const c = pod.status.conditions?.find((x) => x.type === 'PodScheduled');
    if (c && c.status === 'False' && c.reason === 'Unschedulable') return c.message ?? 'Unschedulable';
  }
  return undefined;
}

function deploymentFor(
  obj: GpuBackend,
  dep: DeploymentSpec,
  owner: object,
  sidecar: SidecarSettings | null,
): KubeObject {
  const name = obj.metadata.name;
  const gpu = dep.gpuResource || DEFAULT_GPU_RESOURCE;
  const gpus = dep.gpusPerReplica;
  const requests: Record<string, string | number> = { ...(dep.resources?.requests ?? {}) };
  const limits: Record<string, string | number> = { ...(dep.resources?.limits ?? {}) };
  if (gpus > 0) {
    requests[gpu] = String(gpus);
    limits[gpu] = String(gpus);
  }
  const labels = { ...MANAGED_BY, [BACKEND_LABEL]: name };
  const tolerations = dep.tolerations ?? [{ key: gpu, operator: 'Exists', effect: 'NoSchedule' }];
  const containers: object[] = [
    {
      name: 'model',
      image: dep.image,
      ...(dep.command ? { command: dep.command } : {}),
      ...(dep.args ? { args: dep.args } : {}),
      ports: [{ name: 'http', containerPort: dep.port, protocol: 'TCP' }],
      env: (dep.env ?? []).map((e) =>
        e.secretKeyRef
          ? {
              name: e.name,
              valueFrom: { secretKeyRef: { name: e.secretKeyRef.name, key: e.secretKeyRef.key } },
            }
          : { name: e.name, value: e.value ?? '' },
      ),
      resources: { requests, limits },
      readinessProbe: {
        httpGet: { path: dep.healthPath, port: 'http' },
        periodSeconds: 5,
        failureThreshold: 3,
      },
    },
  ];
  const tls = sidecar ? (dep.sidecarTLS ?? null) : null;
  if (sidecar) {
    containers.push({
      name: SIDECAR.name,
      image: sidecar.image,
      // The data plane's Node.js flags (dataplane/node-flags.ts), then the script and its flags.
      command: ['node', ...DATAPLANE_NODE_FLAGS],
      args: [
        'dataplane/main.ts',
        `--port=${SIDECAR.port}`,
        `--admin-port=${SIDECAR.adminPort}`,
        '--push-token-file=/var/run/gpugate/token',
        ...(tls
          ? [`--tls-cert-file=${SIDECAR.tlsDir}/tls.crt`, `--tls-key-file=${SIDECAR.tlsDir}/tls.key`]
          : []),
      ],
      ports: [
        { name: 'gpugate', containerPort: SIDECAR.port, protocol: 'TCP' },
        { name: 'gpugate-admin', containerPort: SIDECAR.adminPort, protocol: 'TCP' },
      ],
      readinessProbe: { httpGet: { path: '/readyz', port: 'gpugate-admin' }, periodSeconds: 5 },
      volumeMounts: [
        { name: 'gpugate-push-token', mountPath: '/var/run/gpugate', readOnly: true },
        ...(tls ? [{ name: 'gpugate-tls', mountPath: SIDECAR.tlsDir, readOnly: true }] : []),
      ],
    });
  }
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: {
      name: childName(name),
      namespace: obj.metadata.namespace,
      labels,
      ownerReferences: [owner as never],
    },
    spec: {
      replicas: dep.replicas,
      selector: { matchLabels: { [BACKEND_LABEL]: name } },
      template: {
        metadata: { labels },
        spec: {
          ...(dep.nodeSelector ? { nodeSelector: dep.nodeSelector } : {}),
          tolerations,
          containers,
          ...(sidecar
            ? {
                volumes: [
                  {
                    name: 'gpugate-push-token',
                    secret: { secretName: sidecar.pushTokenSecret, items: [{ key: 'token', path: 'token' }] },
                  },
                  ...(tls
                    ? [
                        {
                          name: 'gpugate-tls',
                          secret: {
                            secretName: tls.secretName,
                            items: [
                              { key: 'tls.crt', path: 'tls.crt' },
                              { key: 'tls.key', path: 'tls.key' },
                            ],
                          },
                        },
                      ]
                    : []),
                ],
              }
            : {}),
        },
      },
    },
  };
}

function serviceFor(obj: GpuBackend, dep: DeploymentSpec, owner: object, sidecar: boolean): KubeObject {
  const name = obj.metadata.name;
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: {
      name: childName(name),
      namespace: obj.metadata.namespace,
      labels: { ...MANAGED_BY, [BACKEND_LABEL]: name },
      ownerReferences: [owner as never],
    },
    spec: {
      selector: { [BACKEND_LABEL]: name },
      ports: [
        { name: 'http', port: dep.port, targetPort: 'http', protocol: 'TCP' },
        ...(sidecar
          ? [
              {
                name: 'gpugate',
                port: SIDECAR.port,
                targetPort: 'gpugate',
                protocol: 'TCP',
                appProtocol: dep.sidecarTLS ? 'https' : 'http',
              },
              {
                name: 'gpugate-admin',
                port: SIDECAR.adminPort,
                targetPort: 'gpugate-admin',
                protocol: 'TCP',
              },
            ]
          : []),
      ],
    },
  };
}
