// The operator's core: informers feed a de-duplicating work queue of `Kind/namespace/name` keys; workers
// (only on the leader) hand each key to its kind's reconciler, which re-reads the cache and converges.
// Every change that can alter the snapshot also schedules a (debounced) compile; the compile's problems
// become the objects' status conditions, so an object whose problems changed is queued again.
import { randomBytes } from 'node:crypto';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { generatedSecretName, type ApiKey, type GpuBackend, type Tenant } from '../api/v1alpha1/index.ts';
import { KubeClient, KubeError, paths, type KubeObject } from '../kube/client.ts';
import { startInformer, type Informer, type InformerHandlers } from '../kube/informer.ts';
import { startLeaderElection, type LeaderElector } from '../leader/lease.ts';
import { createPublisher, type Publisher, type PushTarget } from '../push/publisher.ts';
import {
  objectId,
  type DiscoveredEndpoint,
  type ObjectProblem,
  type SecretData,
} from '../snapshot/compile.ts';
import { apiKeyReconciler } from './apikey.ts';
import {
  childName,
  gpuBackendReconciler,
  podEndpoints,
  slicesOf,
  SIDECAR,
  type SidecarSettings,
} from './gpubackend.ts';
import { WorkQueue, type Lane } from './queue.ts';
import { tenantQuotaMetrics, tenantReconciler } from './tenant.ts';
import {
  BACKEND_LABEL,
  MANAGED_SELECTOR,
  RetryableError,
  TerminalError,
  type Caches,
  type ControllerContext,
  type EndpointSlice,
  type Kind,
  type Reconciler,
  type Secret,
} from './types.ts';
import { createUsageReader, type UsageReader } from './usage.ts';
import { registeredEndpointsOf, startRegistrationWatcher, type RegistrationWatcher } from './registration.ts';

export interface OperatorOptions {
  kubeConfig: KubeConfig;
  logger: Logger;
  registry: Registry;
  /** Watch only this namespace (tests; single-namespace installs). Absent: every namespace. */
  namespace?: string;
  identity?: string;
  lease: { namespace: string; name: string; durationMs?: number };
  /** The shared data plane's Service: its EndpointSlices' ready addresses on the admin port get pushes. */
  dataplaneService?: { namespace: string; name: string; adminPort: number };
  /** Extra data-plane admin URLs pushed to as well (data planes outside the cluster, tests). */
  dataplaneUrls?: string[];
  pushTokenSecret: { namespace: string; name: string; key: string };
  databaseUrl?: string;
  usageIntervalMs?: number;
  /** How often registered endpoints are re-read at the latest (they also follow NOTIFY and expiry). */
  registrationIntervalMs?: number;
  sidecar?: SidecarSettings;
  /** CIDRs of the proxies in front of the data planes (the ingress), into the snapshot's settings. */
  trustedProxies?: string[];
  workers?: number;
  resyncMs?: number;
}

export interface Operator {
  publisher: Publisher;
  /** Every data-plane admin URL pushed to (shared replicas, sidecars, --dataplane-url), for the fleet view. */
  targets(): PushTarget[];
  isLeader(): boolean;
  ready(): boolean;
  pushToken(): string | null;
  stop(): Promise<void>;
}

type CR = (GpuBackend | Tenant | ApiKey) & KubeObject;

export async function startOperator(opts: OperatorOptions): Promise<Operator> {
  const { logger, registry } = opts;
  const client = new KubeClient(opts.kubeConfig);
  const ns = opts.namespace;
  const queue = new WorkQueue();
  const identity = opts.identity ?? `${process.env.HOSTNAME ?? 'operator'}-${randomBytes(3).toString('hex')}`;

  const reconciles = new Counter({
    name: 'gpugate_operator_reconciles_total',
    help: 'Reconciles by kind and result (done, requeue, retry, terminal).',
    labelNames: ['kind', 'result'],
    registers: [registry],
  });
  new Gauge({
    name: 'gpugate_operator_queue_depth',
    help: 'Keys waiting in the work queue.',
    registers: [registry],
    collect() {
      this.set(queue.depth);
    },
  });
  const leaderGauge = new Gauge({
    name: 'gpugate_operator_leader',
    help: '1 while this replica holds the leader Lease.',
    registers: [registry],
  });

  const enqueue = (kind: Kind, namespace: string | undefined, name: string, lane: Lane = 'spec') => {
    const key = `${kind}/${namespace ?? 'default'}/${name}`;
    logger.debug({ key, lane }, 'enqueued');
    queue.add(key, lane);
  };
  let publisher: Publisher | null = null;
  const schedule = () => publisher?.schedule();

  // Custom resources: queued when their generation changes (spec edits), not on status writes.
  const generations = new Map<string, number | undefined>();
  const crHandlers = (
    kind: Kind,
    also?: (obj: CR, deleted: boolean) => void,
    addChangesNothing?: (obj: CR) => boolean,
  ): InformerHandlers<CR> => {
    const id = (o: CR) => `${kind}/${o.metadata.namespace}/${o.metadata.name}`;
    return {
      add(o) {
        generations.set(id(o), o.metadata.generation);
        enqueue(kind, o.metadata.namespace, o.metadata.name);
        also?.(o, false);
        if (!addChangesNothing?.(o)) schedule();
      },
      update(o) {
        const before = generations.get(id(o));
        if (before === o.metadata.generation && !o.metadata.deletionTimestamp) return;
        generations.set(id(o), o.metadata.generation);
        enqueue(kind, o.metadata.namespace, o.metadata.name);
        also?.(o, false);
        schedule();
      },
      delete(o) {
        generations.delete(id(o));
        also?.(o, true);
        schedule();
      },
    };
  };
  const backendOfChild = (o: KubeObject) => {
    const backend = o.metadata?.labels?.[BACKEND_LABEL];
    if (backend) enqueue('GpuBackend', o.metadata?.namespace, backend);
  };
  const childHandlers = (compile: boolean): InformerHandlers<KubeObject> => ({
    add: (o) => (backendOfChild(o), compile && schedule()),
    update: (o) => (backendOfChild(o), compile && schedule()),
    delete: (o) => (backendOfChild(o), compile && schedule()),
  });

  // The ApiKeys reading each Secret ("namespace/secret" → ApiKey names), kept from the ApiKey events: a
  // Secret event finds its keys without a scan over every ApiKey (10,000 Secret events of a preload times
  // 10,000 keys was a quadratic pass on the event loop).
  const keysBySecret = new Map<string, Set<string>>();
  const secretOfKey = new Map<string, string>();
  const indexKeySecret = (k: ApiKey & KubeObject, deleted: boolean) => {
    const id = `${k.metadata.namespace}/${k.metadata.name}`;
    const before = secretOfKey.get(id);
    const after = deleted
      ? undefined
      : `${k.metadata.namespace}/${k.spec?.secretRef?.name ?? generatedSecretName(k.metadata.name!)}`;
    if (before === after) return;
    if (before) {
      keysBySecret.get(before)?.delete(k.metadata.name!);
      if (keysBySecret.get(before)?.size === 0) keysBySecret.delete(before);
      secretOfKey.delete(id);
    }
    if (after) {
      keysBySecret.set(after, (keysBySecret.get(after) ?? new Set()).add(k.metadata.name!));
      secretOfKey.set(id, after);
    }
  };
  const secretChanged = (s: Secret) => {
    const namespace = s.metadata?.namespace;
    // The snapshot follows the Secret through the compile; the key's reconcile only refreshes status.
    for (const name of keysBySecret.get(`${namespace}/${s.metadata?.name}`) ?? [])
      enqueue('ApiKey', namespace, name, 'status');
    // A generated Secret under its UID-suffixed name (apikey.ts) is found by its label.
    const generatedFor = s.metadata?.labels?.['gpugate.io/apikey'];
    if (generatedFor) enqueue('ApiKey', namespace, generatedFor, 'status');
    for (const b of caches.gpuBackends.list(namespace)) {
      const refs = [
        b.spec?.upstreamAuth?.secretRef?.name,
        b.spec?.registration?.secretRef?.name,
        b.spec?.deployment?.sidecarTLS?.secretName,
      ];
      if (refs.includes(s.metadata?.name)) enqueue('GpuBackend', namespace, b.metadata.name);
    }
    schedule();
  };
  const cr = <T extends KubeObject>(plural: string, h: InformerHandlers<CR>) =>
    startInformer<T>(
      opts.kubeConfig,
      client,
      paths.custom(plural, ns),
      h as unknown as InformerHandlers<T>,
      logger,
    );
  const caches: Caches = {
    gpuBackends: cr('gpubackends', crHandlers('GpuBackend')),
    tenants: cr('tenants', crHandlers('Tenant')),
    apiKeys: cr(
      'apikeys',
      crHandlers(
        'ApiKey',
        (k, deleted) => {
          indexKeySecret(k as ApiKey & KubeObject, deleted);
          // The Tenant's key count is status only.
          enqueue('Tenant', k.metadata.namespace, (k as ApiKey).spec.tenant, 'status');
        },
        // A new key whose Secret the operator still has to generate cannot be in a snapshot yet: the
        // compile comes with the Secret's watch event. (At 10,000 keys a compile takes a few hundred ms,
        // and this one would hold the next, useful one back by the coalescing.) Edits always recompile.
        (k) =>
          !(k as ApiKey).spec.secretRef &&
          !caches.secrets.get(generatedSecretName(k.metadata.name!), k.metadata.namespace),
      ),
    ),
    secrets: startInformer<Secret>(
      opts.kubeConfig,
      client,
      paths.core('secrets', ns),
      { add: secretChanged, update: secretChanged, delete: secretChanged },
      logger,
    ),
    backendSlices: startInformer<EndpointSlice>(
      opts.kubeConfig,
      client,
      paths.group('discovery.k8s.io', 'v1', 'endpointslices', ns),
      childHandlers(true),
      logger,
      MANAGED_SELECTOR,
    ),
    backendPods: startInformer(
      opts.kubeConfig,
      client,
      paths.core('pods', ns),
      childHandlers(false),
      logger,
      MANAGED_SELECTOR,
    ),
    backendDeployments: startInformer(
      opts.kubeConfig,
      client,
      paths.group('apps', 'v1', 'deployments', ns),
      childHandlers(false),
      logger,
      MANAGED_SELECTOR,
    ),
    backendServices: startInformer(
      opts.kubeConfig,
      client,
      paths.core('services', ns),
      childHandlers(false),
      logger,
      MANAGED_SELECTOR,
    ),
  };
  const dp = opts.dataplaneService;
  const dataplaneSlices = dp
    ? startInformer<EndpointSlice>(
        opts.kubeConfig,
        client,
        paths.group('discovery.k8s.io', 'v1', 'endpointslices', dp.namespace),
        { add: schedule, update: schedule, delete: schedule },
        logger,
        `kubernetes.io/service-name=${dp.name}`,
      )
    : null;

  // The push token, from its Secret (re-read periodically so a rotation is picked up).
  let token: string | null = null;
  const readToken = async () => {
    const { namespace, name, key } = opts.pushTokenSecret;
    try {
      const s = await client.get<Secret>(paths.core('secrets', namespace, name));
      const raw = s.data?.[key];
      const next = raw ? Buffer.from(raw, 'base64').toString('utf8').trim() : null;
      if (next !== token) {
        token = next;
        if (token) publisher?.resync();
      }
      if (!next) logger.warn({ secret: `${namespace}/${name}`, key }, 'push token Secret has no such key');
    } catch (err) {
      logger.warn(
        { err: (err as Error).message, secret: `${namespace}/${name}` },
        'cannot read the push token Secret',
      );
    }
  };
  await readToken();
  const tokenTimer = setInterval(() => void readToken(), 10_000);

  const decoded = new WeakMap<Secret, SecretData>();
  const secretData = (s: Secret): SecretData => {
    let d = decoded.get(s);
    if (!d) {
      const data: Record<string, string> = {};
      for (const [k, v] of Object.entries(s.data ?? {})) data[k] = Buffer.from(v, 'base64').toString('utf8');
      d = {
        namespace: s.metadata?.namespace ?? 'default',
        name: s.metadata?.name ?? '',
        data,
        ownerUids: (s.metadata?.ownerReferences ?? []).map((o) => o.uid),
      };
      decoded.set(s, d);
    }
    return d;
  };

  const readyAdminUrls = (slices: readonly EndpointSlice[], portName: string, fallbackPort?: number) => {
    const urls: string[] = [];
    for (const slice of slices) {
      const port = slice.ports?.find((p) => p.name === portName)?.port ?? fallbackPort;
      if (port === undefined) continue;
      for (const e of slice.endpoints ?? []) {
        if (e.conditions?.ready === false || !e.addresses[0]) continue;
        const host = slice.addressType === 'IPv6' ? `[${e.addresses[0]}]` : e.addresses[0];
        urls.push(`http://${host}:${port}`);
      }
    }
    return urls;
  };
  const sidecarBackends = () =>
    caches.gpuBackends.list().filter((b) => b.spec?.deployment?.dataplane === 'sidecar' && opts.sidecar);

  const targets = (): PushTarget[] => {
    const out = new Map<string, PushTarget>();
    for (const url of opts.dataplaneUrls ?? []) out.set(url, { url });
    if (dataplaneSlices && dp) {
      for (const url of readyAdminUrls(dataplaneSlices.list(dp.namespace), 'admin', dp.adminPort))
        out.set(url, { url });
    }
    for (const b of sidecarBackends()) {
      const slices = slicesOf(caches, b.metadata.namespace ?? 'default', childName(b.metadata.name));
      // Sidecars answer /readyz only after their first snapshot, so not-ready ones need a push too.
      for (const slice of slices) {
        const port = slice.ports?.find((p) => p.name === 'gpugate-admin')?.port ?? SIDECAR.adminPort;
        for (const e of slice.endpoints ?? []) {
          if (!e.addresses[0] || e.conditions?.terminating) continue;
          const url = `http://${e.addresses[0]}:${port}`;
          out.set(url, { url, variant: objectId(b.metadata) });
        }
      }
    }
    return [...out.values()].sort((a, b) => a.url.localeCompare(b.url));
  };

  // Self-registered endpoints (with DATABASE_URL): a change recompiles and rewrites those backends' status.
  const registrations: RegistrationWatcher | null = opts.databaseUrl
    ? startRegistrationWatcher({
        databaseUrl: opts.databaseUrl,
        logger,
        ...(opts.registrationIntervalMs ? { intervalMs: opts.registrationIntervalMs } : {}),
        onChange(ids) {
          for (const id of ids) {
            const [namespace, ...rest] = id.split('/');
            enqueue('GpuBackend', namespace, rest.join('/'));
          }
          schedule();
        },
      })
    : null;

  let elector: LeaderElector | null = null;
  let problemIndex = new Map<string, ObjectProblem[]>();
  const statusAfterCompile = new Set<string>();
  const problemKey = (kind: Kind, namespace: string, name: string) => `${kind}/${namespace}/${name}`;
  publisher = createPublisher({
    logger,
    registry,
    input: () => {
      const gpuBackends = caches.gpuBackends.list() as unknown as GpuBackend[];
      const discoveredEndpoints: Record<string, DiscoveredEndpoint[]> = {};
      for (const b of gpuBackends) {
        const dep = b.spec?.deployment;
        const registered = registeredEndpointsOf(b, registrations);
        if (!dep && registered.length === 0) continue;
        discoveredEndpoints[objectId(b.metadata)] = [
          ...(dep
            ? podEndpoints(caches, b.metadata.namespace ?? 'default', b.metadata.name, dep.port ?? 8000)
            : []),
          ...registered,
        ];
      }
      return {
        gpuBackends,
        tenants: caches.tenants.list() as unknown as Tenant[],
        apiKeys: caches.apiKeys.list() as unknown as ApiKey[],
        secrets: caches.secrets.list().map(secretData),
        discoveredEndpoints,
        ...(opts.trustedProxies ? { settings: { trustedProxies: opts.trustedProxies } } : {}),
      };
    },
    targets,
    variantInput: (backendId, input) => {
      const b = caches.gpuBackends.list().find((x) => objectId(x.metadata) === backendId);
      const port = b?.spec?.deployment?.port ?? 8000;
      return {
        ...input,
        discoveredEndpoints: {
          ...input.discoveredEndpoints,
          [backendId]: [{ url: `http://127.0.0.1:${port}`, ready: true, source: 'pod' }],
        },
      };
    },
    token: () => token,
    isLeader: () => elector?.isLeader() ?? false,
    onProblems(problems) {
      const next = new Map<string, ObjectProblem[]>();
      for (const p of problems) {
        const k = problemKey(p.kind, p.namespace, p.name);
        next.set(k, [...(next.get(k) ?? []), p]);
      }
      for (const k of new Set([...problemIndex.keys(), ...next.keys()])) {
        if (JSON.stringify(problemIndex.get(k)) !== JSON.stringify(next.get(k))) queue.add(k, 'status');
      }
      problemIndex = next;
      // Statuses held back while this compile was due (deferStatus) can be written now.
      for (const k of statusAfterCompile) queue.add(k, 'status');
      statusAfterCompile.clear();
    },
  });

  const ctx: ControllerContext = {
    client,
    caches,
    logger,
    problemsOf: (kind, key) => problemIndex.get(problemKey(kind, key.namespace, key.name)) ?? [],
    deferStatus(kind, key) {
      if (!publisher?.pending()) return false;
      statusAfterCompile.add(problemKey(kind, key.namespace, key.name));
      return true;
    },
    registeredEndpoints: (key) => registrations?.endpoints(`${key.namespace}/${key.name}`) ?? [],
    now: () => new Date(),
  };
  const usage: UsageReader | null = opts.databaseUrl ? createUsageReader(opts.databaseUrl) : null;
  const quotaMetrics = usage ? tenantQuotaMetrics(registry) : null;
  const reconcilers = new Map<Kind, Reconciler>(
    [
      gpuBackendReconciler(ctx, opts.sidecar ?? null),
      tenantReconciler(ctx, usage, opts.usageIntervalMs ?? 30_000, quotaMetrics),
      apiKeyReconciler(ctx),
    ].map((r) => [r.kind, r]),
  );

  const enqueueAll = () => {
    for (const b of caches.gpuBackends.list()) enqueue('GpuBackend', b.metadata.namespace, b.metadata.name);
    for (const t of caches.tenants.list()) enqueue('Tenant', t.metadata.namespace, t.metadata.name, 'status');
    for (const k of caches.apiKeys.list()) enqueue('ApiKey', k.metadata.namespace, k.metadata.name);
  };

  let synced = false;
  let stopping = false;
  let wakeLeader: (() => void) | null = null;
  const leader: LeaderElector = startLeaderElection({
    client,
    namespace: opts.lease.namespace,
    name: opts.lease.name,
    identity,
    ...(opts.lease.durationMs ? { leaseDurationMs: opts.lease.durationMs } : {}),
    logger,
    onStartedLeading() {
      leaderGauge.set(1);
      if (synced) {
        enqueueAll();
        publisher?.resync();
      }
      wakeLeader?.();
    },
    onStoppedLeading() {
      leaderGauge.set(0);
      quotaMetrics?.clear();
    },
  });
  elector = leader;

  await Promise.all([
    ...Object.values(caches).map((c: Informer<KubeObject>) => c.synced()),
    dataplaneSlices?.synced(),
  ]);
  synced = true;
  publisher.compile();
  logger.info(
    {
      identity,
      namespace: ns ?? '(all)',
      backends: caches.gpuBackends.list().length,
      tenants: caches.tenants.list().length,
      apiKeys: caches.apiKeys.list().length,
      revision: publisher.current()?.revision.slice(0, 12),
    },
    'caches synced',
  );
  if (leader.isLeader()) {
    enqueueAll();
    publisher.pushAll();
  }
  const resyncTimer = setInterval(() => publisher?.resync(), opts.resyncMs ?? 30_000);

  const worker = async (): Promise<void> => {
    for (;;) {
      while (!leader.isLeader() && !stopping) {
        await new Promise<void>((resolve) => {
          wakeLeader = resolve;
          setTimeout(resolve, 1000);
        });
      }
      const key = await queue.get();
      if (key === null) return;
      const [kind, namespace, ...rest] = key.split('/') as [Kind, string, ...string[]];
      const name = rest.join('/');
      const reconciler = reconcilers.get(kind);
      try {
        if (!reconciler || !leader.isLeader()) {
          // A follower leaves keys for whoever leads; onStartedLeading queues everything again.
          continue;
        }
        const started = Date.now();
        const outcome = await reconciler.reconcile({ namespace, name });
        queue.forget(key);
        logger.debug({ key, ms: Date.now() - started, outcome: outcome.result }, 'reconciled');
        if (outcome.result === 'requeueAfter') {
          reconciles.labels(kind, 'requeue').inc();
          queue.addAfter(key, outcome.ms, outcome.lane);
        } else {
          reconciles.labels(kind, 'done').inc();
        }
      } catch (err) {
        if (err instanceof TerminalError) {
          reconciles.labels(kind, 'terminal').inc();
          queue.forget(key);
          logger.error({ key, err: err.message }, 'reconcile failed; not retrying');
        } else {
          reconciles.labels(kind, 'retry').inc();
          const delay = queue.addRateLimited(key);
          const conflict = err instanceof KubeError && err.status === 409;
          logger[conflict ? 'debug' : 'warn'](
            { key, err: (err as Error).message, retryable: err instanceof RetryableError, retryInMs: delay },
            'reconcile failed; retrying',
          );
        }
      } finally {
        queue.done(key);
      }
    }
  };
  const workers = Array.from({ length: opts.workers ?? 4 }, () => worker());

  return {
    publisher,
    targets,
    isLeader: () => leader.isLeader(),
    ready: () => synced,
    pushToken: () => token,
    async stop() {
      stopping = true;
      clearInterval(tokenTimer);
      clearInterval(resyncTimer);
      queue.shutdown();
      wakeLeader?.();
      publisher?.stop();
      await leader.release();
      await Promise.all([
        ...Object.values(caches).map((c: Informer<KubeObject>) => c.stop()),
        dataplaneSlices?.stop(),
      ]);
      await Promise.race([Promise.all(workers), new Promise((r) => setTimeout(r, 2000))]);
      await usage?.close();
      await registrations?.close();
    },
  };
}
