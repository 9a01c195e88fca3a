// Read-only admin views for people on call, on the admin port with the push token as Bearer:
//   GET /admin/info                      this replica: version, snapshot revision and age, uptime, features
//   GET /admin/backends                  every backend and endpoint: source, health state and why, load
//   GET /admin/tenants/<ns>/<name>       limits, bucket levels, leases and quota of one tenant and its keys
// and, without a token (for a load balancer, ids and counts only):
//   GET /readyz/backends                 200 when every backend has a healthy endpoint, else 503
// The shapes are documented in docs/operability.md; fields are only ever added.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Snapshot, Tenant } from '../config/snapshot.ts';
import type { Admission } from '../admission/admission.ts';
import type { LimitState } from '../limits/limiter.ts';
import type { CompiledBackend, Runtime } from '../routing/runtime.ts';
import { loadView, type EndpointState } from '../upstream/endpoint.ts';
import { quotaState, type Db, type QuotaState } from '../usage/queries.ts';
import { requireBearer } from './admin.ts';

const VIEWS_VERSION = 1;

export interface ViewDeps {
  token: string | null;
  version: string;
  instanceId: string;
  startedAt: number;
  current(): Runtime | null;
  snapshot(): Snapshot | null;
  snapshotAgeMs(): number | null;
  admission: Admission;
  usageDb: Db | null;
  features: Record<string, boolean>;
}

export type EndpointHealth = 'healthy' | 'ejected' | 'failing_checks' | 'not_ready';

export interface EndpointView {
  id: string;
  url: string;
  source: string;
  weight: number;
  state: EndpointHealth;
  /** Why it is not healthy; null when healthy. */
  reason: string | null;
  ejectedForMs: number;
  ejections: number;
  lastFailure: { kind: string; message: string; ageMs: number } | null;
  inflight: number;
  /** Its responses carry X-Gpugate-Version: another gpugate. */
  gateway: boolean;
  load: { waiting: number; running: number; kvCacheUsage: number; ageMs: number } | null;
}

export interface BackendView {
  id: string;
  policy: string;
  queued: number;
  panicking: boolean;
  healthy: number;
  total: number;
  endpoints: EndpointView[];
}

export interface BucketView {
  limitPerMinute: number;
  remaining: number;
  msUntilFull: number;
}

export interface LimitView {
  /** Cluster-wide limits as configured. */
  configured: {
    requestsPerMinute: number | null;
    tokensPerMinute: number | null;
    concurrentRequests: number | null;
  };
  /** This replica's share and where its buckets are; null when no request has used them yet. */
  replica: {
    requests: BucketView | null;
    tokens: BucketView | null;
    concurrent: { limit: number; inflight: number };
  } | null;
}

function endpointView(e: EndpointState, source: string, now: number): EndpointView {
  let state: EndpointHealth = 'healthy';
  let reason: string | null = null;
  if (!e.ready) {
    state = 'not_ready';
    reason = 'the control plane lists it as not ready';
  } else if (e.ejectedUntil > now) {
    state = 'ejected';
    const last = e.lastFailure ? `; last: ${e.lastFailure.kind} (${e.lastFailure.message})` : '';
    reason = `outlier ejection #${e.ejections} after consecutive failures${last}`;
  } else if (!e.activeHealthy) {
    state = 'failing_checks';
    reason = `active health check failed ${e.consecutiveCheckFail} times in a row`;
  }
  return {
    id: e.id,
    url: e.url,
    source,
    weight: e.weight,
    state,
    reason,
    ejectedForMs: Math.max(0, e.ejectedUntil - now),
    ejections: e.ejections,
    lastFailure: e.lastFailure
      ? { kind: e.lastFailure.kind, message: e.lastFailure.message, ageMs: now - e.lastFailure.at }
      : null,
    inflight: e.inflight,
    gateway: e.gateway,
    load: loadView(e, now),
  };
}

function backendView(b: CompiledBackend, now: number): BackendView {
  const endpoints = b.endpoints.map((e, i) =>
    endpointView(e, b.backend.endpoints[i]?.source ?? 'static', now),
  );
  return {
    id: b.id,
    policy: b.backend.balancing.policy,
    queued: b.state.waiters.length,
    panicking: b.state.panicking,
    healthy: endpoints.filter((e) => e.state === 'healthy').length,
    total: endpoints.length,
    endpoints,
  };
}

function limitView(
  limits: { requestsPerMinute?: number; tokensPerMinute?: number; concurrentRequests?: number },
  state: LimitState | undefined,
  now: number,
): LimitView {
  const bucket = (b: LimitState['requests']): BucketView | null =>
    b ? { limitPerMinute: b.capacity, remaining: b.remaining(now), msUntilFull: b.msUntilFull(now) } : null;
  return {
    configured: {
      requestsPerMinute: limits.requestsPerMinute || null,
      tokensPerMinute: limits.tokensPerMinute || null,
      concurrentRequests: limits.concurrentRequests || null,
    },
    replica: state
      ? {
          requests: bucket(state.requests),
          tokens: bucket(state.tokens),
          concurrent: { limit: state.concurrent, inflight: state.inflight },
        }
      : null,
  };
}

export function adminViews(deps: ViewDeps) {
  const refusal = {
    code: 'bad_admin_token',
    message: 'the admin views need the push token as a Bearer token',
  };
  const authorized = (request: FastifyRequest, reply: FastifyReply): boolean =>
    requireBearer(request, reply, deps.token, refusal);

  return async function views(app: FastifyInstance): Promise<void> {
    app.get('/admin/info', async (request, reply) => {
      if (!authorized(request, reply)) return reply;
      const snap = deps.snapshot();
      return reply.send({
        viewsVersion: VIEWS_VERSION,
        version: deps.version,
        replica: deps.instanceId,
        uptimeMs: Date.now() - deps.startedAt,
        snapshot: snap
          ? {
              revision: snap.revision,
              generatedAt: snap.generatedAt,
              ageMs: deps.snapshotAgeMs(),
              backends: snap.backends.length,
              tenants: snap.tenants.length,
              keys: snap.keys.length,
              replicas: snap.settings.replicas,
            }
          : null,
        features: deps.features,
      });
    });

    app.get('/admin/backends', async (request, reply) => {
      if (!authorized(request, reply)) return reply;
      const now = Date.now();
      const rt = deps.current();
      return reply.send({
        replica: deps.instanceId,
        revision: rt?.revision ?? null,
        backends: (rt?.backends ?? []).map((b) => backendView(b, now)),
      });
    });

    app.get<{ Params: { ns: string; name: string } }>('/admin/tenants/:ns/:name', async (request, reply) => {
      if (!authorized(request, reply)) return reply;
      const id = `${request.params.ns}/${request.params.name}`;
      const snap = deps.snapshot();
      const tenant: Tenant | undefined = snap?.tenants.find((t) => t.id === id);
      if (!snap || !tenant) {
        return reply.code(404).send({
          error: {
            type: 'not_found_error',
            code: 'unknown_tenant',
            message: `no tenant ${id} in the snapshot`,
          },
        });
      }
      const now = Date.now();
      const store = deps.admission.limits;
      const outstanding = deps.admission.quota?.outstanding() ?? null;
      let quota: QuotaState | null = null;
      let quotaError: string | null = null;
      if (deps.usageDb && tenant.quota) {
        quota = await quotaState(deps.usageDb, 'tenant', id).catch((err: unknown) => {
          quotaError = err instanceof Error ? err.message : String(err);
          return null;
        });
      }
      return reply.send({
        replica: deps.instanceId,
        revision: snap.revision,
        tenant: id,
        suspended: tenant.suspended,
        failOpen: tenant.failOpen,
        allowedModels: tenant.allowedModels,
        allowedBackends: tenant.allowedBackends,
        limits: limitView(tenant.limits, store.peek(`tenant:${id}`), now),
        quota: tenant.quota
          ? {
              credits: tenant.quota.credits,
              period: tenant.quota.period,
              leasedHere: outstanding?.get(`tenant:${id}`) ?? null,
              balance: quota,
              balanceError: quotaError,
            }
          : null,
        keys: snap.keys
          .filter((k) => k.tenant === id)
          .map((k) => ({
            id: k.id,
            prefix: k.prefix,
            disabled: k.disabled,
            expiresAt: k.expiresAt,
            limits: limitView(k.limits, store.peek(`key:${k.id}`), now),
            quota: k.quota ? { ...k.quota, leasedHere: outstanding?.get(`key:${k.id}`) ?? null } : null,
          })),
      });
    });

    app.get('/readyz/backends', async (_request, reply) => {
      const now = Date.now();
      const rt = deps.current();
      if (!rt) return reply.code(503).send({ status: 'waiting for the first snapshot', backends: [] });
      const backends = rt.backends.map((b) => {
        const v = backendView(b, now);
        return { id: v.id, healthy: v.healthy, total: v.total };
      });
      const down = backends.filter((b) => b.healthy === 0).map((b) => b.id);
      return reply.code(down.length > 0 ? 503 : 200).send({
        status:
          down.length > 0
            ? `no healthy endpoint: ${down.join(', ')}`
            : 'every backend has a healthy endpoint',
        backends,
      });
    });
  };
}
