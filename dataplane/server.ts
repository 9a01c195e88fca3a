// createDataPlane: the public proxy port and the admin port, around one atomically swapped runtime.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Server as TlsServer } from 'node:tls';
import Fastify, { type FastifyError } from 'fastify';
import { pino, type Level, type Logger } from 'pino';
import { Registry } from 'prom-client';
import { SnapshotStore } from './config/validate.ts';
import type { UsageSink } from './metering/usage.ts';
import { adminUsageRoutes, usageRoutes } from './usage/api.ts';
import type { Db } from './usage/queries.ts';
import { adminPlugin, type ApplyResult } from './admin/admin.ts';
import { readiness, type MeteringProbe } from './admin/readiness.ts';
import { adminViews } from './admin/views.ts';
import { AccessLog, type AccessLogOptions } from './observability/access-log.ts';
import { Tracing, type TracingOptions } from './observability/tracing.ts';
import { Admission } from './admission/admission.ts';
import type { JwksOptions } from './auth/jwt.ts';
import { corsHook } from './http/cors.ts';
import { FastifyRoutes, frontDoor, requestIdOf } from './http/front-door.ts';
import type { QuotaManager } from './metering/quota.ts';
import { gatewayError, sendGatewayError } from './errors.ts';
import { countUsage, createMetrics, type EndpointHealth } from './metrics/metrics.ts';
import { Proxy, PROXY_METHODS, proxyPlugin } from './proxy/proxy.ts';
import { Runtime } from './routing/runtime.ts';
import type { TaskStore } from './metering/tasks.ts';
import { MemoryTaskStore } from './tasks/store.ts';
import { registrationRoutes } from './registration/routes.ts';
import type { RegistrationStore } from './registration/store.ts';
import { loadTlsPair, tlsMetrics, watchTlsPair, type TlsFiles } from './tls/certs.ts';
import { UpstreamRegistry } from './upstream/endpoint.ts';
import { DEFAULT_OUTLIER, type OutlierOptions } from './upstream/health.ts';
import { warmUp, type WarmupOptions, type WarmupOutcome } from './warmup.ts';

export const GPUGATE_VERSION: string = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

export interface DataPlaneOptions {
  logger?: Logger;
  /**
   * Receives one usage event per admitted request; none: usage is not recorded. A sink with
   * canAdmit(failOpen) (the metering writer) also refuses fail-closed tenants while it cannot record.
   */
  usageSink?: UsageSink;
  /** Quota leases (createQuotaManager); none: quotas are not enforced. */
  quota?: QuotaManager;
  /** JWKS fetching: refetch cooldown on unknown kids, cache age, timeout. */
  jwks?: Partial<JwksOptions>;
  /** The usage database behind GET /v1/usage and the admin usage routes; none: they answer 503. */
  usageDb?: Db;
  registry?: Registry;
  /**
   * Where async task affinity is kept: createTaskStore (dataplane/metering/tasks.ts) over Postgres to
   * share it across replicas; in memory (this replica only) by default.
   */
  taskStore?: TaskStore;
  /** Where POST /webhook/register records endpoints (createPgRegistrationStore); none: 503. */
  registrationStore?: RegistrationStore;
  listen: { host: string; port: number };
  /**
   * Serve HTTPS on the public port with this certificate and key (PEM files, reloaded when they
   * change). The admin port stays plain HTTP (docs/security.md). None: plain HTTP.
   */
  tls?: TlsFiles & { onReload?: (outcome: 'reloaded' | 'refused') => void };
  /** token null disables PUT /config (a snapshot can still be applied in-process). */
  admin: { host: string; port: number; token: string | null };
  /** Names this gateway in Via for loop detection; shared by replicas of one gateway. Random by default. */
  instanceId?: string;
  outlier?: Partial<OutlierOptions>;
  /** Percentage of healthy endpoints below which health is ignored (0: only when none is healthy). */
  panicThresholdPercent?: number;
  /** How often QueueAware backends' model-server metrics are scraped. */
  scrapeIntervalMs?: number;
  /** One pino line per request (docs/operability.md); on at info, every request, by default. */
  accessLog?: Partial<AccessLogOptions>;
  /** OpenTelemetry spans over OTLP/HTTP; off (null) by default. */
  tracing?: TracingOptions | null;
  /**
   * A client must send its complete request headers within this (slowloris); the connection is closed
   * after, checked every quarter of it. Default 10 s. Bodies and responses are bounded per backend instead.
   */
  headersTimeoutMs?: number;
  /** Small JSON bodies (read by the gateway to find the model) must arrive within this; 408 after. Default 30 s. */
  bodyReadTimeoutMs?: number;
  /**
   * Before /readyz says ready, serve this many requests through a private plane in this process, within
   * the budget (dataplane/warmup.ts), so the first real request runs optimized code. None (the default
   * when embedded) or 0 requests: no warm-up; dataplane/main.ts warms up by default.
   */
  warmup?: WarmupOptions;
}

export interface DataPlane {
  /** Validates and applies a snapshot (the same path as PUT /config). */
  applySnapshot(input: unknown): ApplyResult;
  readonly url: string;
  readonly adminUrl: string;
  readonly instanceId: string;
  revision(): string | null;
  /** The warm-up's outcome, once the warm-up is over and its private plane closed ({ state: 'off' } without one). */
  readonly warmup: Promise<WarmupOutcome>;
  /** Stops accepting, waits for in-flight requests (up to drainMs, then cuts them), closes pools and ports. */
  close(opts?: { drainMs?: number }): Promise<void>;
}

interface MeteringGate {
  canAdmit(failOpen: boolean): boolean;
}

function urlOf(app: { server: Server }, scheme = 'http'): string {
  const addr = app.server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return `${scheme}://${host}:${addr.port}`;
}

export async function createDataPlane(opts: DataPlaneOptions): Promise<DataPlane> {
  const logger = opts.logger ?? pino({ level: process.env.LOG_LEVEL ?? 'info' });
  const registry = opts.registry ?? new Registry();
  const instanceId = opts.instanceId ?? randomBytes(6).toString('hex');
  const startedAt = Date.now();
  const accessLog = opts.accessLog?.enabled === false ? null : new AccessLog(logger, opts.accessLog);
  const tracing = opts.tracing
    ? new Tracing({ instanceId, version: GPUGATE_VERSION, ...opts.tracing })
    : null;
  const store = new SnapshotStore();
  const upstreams = new UpstreamRegistry();
  const metrics = createMetrics(registry, {
    snapshotAgeMs: () => store.ageMs(),
    queueDepths: () => upstreams.queueDepths(),
    inflight: () => upstreams.inflight(),
    *endpointHealth() {
      const now = Date.now();
      for (const b of current?.backends ?? [])
        for (const e of b.endpoints) {
          const health: EndpointHealth = !e.ready ? 'not_ready' : e.healthy(now) ? 'healthy' : 'unhealthy';
          yield { backend: b.id, health };
        }
    },
  });
  const outlier: OutlierOptions = { ...DEFAULT_OUTLIER, ...opts.outlier };
  const scrapeIntervalMs = opts.scrapeIntervalMs ?? 1_000;
  const headersTimeoutMs = opts.headersTimeoutMs ?? 10_000;
  const sink = opts.usageSink;
  const admission = new Admission({
    logger,
    quota: opts.quota ?? null,
    metering:
      sink && 'canAdmit' in sink && typeof sink.canAdmit === 'function' ? (sink as MeteringGate) : null,
    jwks: opts.jwks,
    rejected: (tenant, reason) => metrics.admissionRejection(tenant, reason),
  });
  // Every usage event is also counted per tenant (requests, tokens, credits by model, TTFB), with or
  // without a sink that stores it.
  const usageSink = countUsage(registry, sink ?? null);
  // /readyz reports the metering writer's buffer (a sink without depth/health reports nothing).
  const meteringProbe =
    sink && 'depth' in sink && 'isHealthy' in sink && 'canAdmit' in sink
      ? (sink as unknown as MeteringProbe)
      : null;
  let current: Runtime | null = null;
  let draining = false;
  /** Null while the warm-up runs (then /readyz says not ready). */
  let warmupState: WarmupOutcome | null = opts.warmup && opts.warmup.requests > 0 ? null : { state: 'off' };

  function applySnapshot(input: unknown): ApplyResult {
    // One parse: the store validates (endpoint URLs included) and says whether a refusal is a stale one.
    const offered = store.offer(input);
    if (!offered.accepted) {
      metrics.snapshotApplies.labels('refused').inc();
      logger.warn({ problems: offered.problems }, 'snapshot refused');
      return { accepted: false, problems: offered.problems, stale: offered.stale };
    }
    const snapshot = offered.snapshot;
    if (!offered.changed) {
      metrics.snapshotApplies.labels('unchanged').inc();
      return { accepted: true, changed: false, revision: snapshot.revision };
    }
    const next = new Runtime(snapshot, { registry: upstreams, metrics, logger, scrapeIntervalMs, admission });
    upstreams.retain(next.endpointStates());
    const previous = current;
    current = next; // the swap: requests that already hold `previous` finish on it
    next.start();
    if (previous)
      previous.retire(() => void Promise.all(upstreams.releaseRuntime(previous.endpointStates())));
    metrics.snapshotApplies.labels('applied').inc();
    metrics.snapshotInfo.reset();
    metrics.snapshotInfo.labels(snapshot.revision).set(1);
    logger.info(
      {
        revision: snapshot.revision,
        backends: snapshot.backends.length,
        tenants: snapshot.tenants.length,
        keys: snapshot.keys.length,
      },
      'snapshot applied',
    );
    return { accepted: true, changed: true, revision: snapshot.revision };
  }

  // Read before anything listens: a bad certificate stops the start with a message naming the file.
  const tlsPair = opts.tls ? loadTlsPair(opts.tls) : null;
  const listenerOptions = {
    headersTimeout: headersTimeoutMs,
    connectionsCheckingInterval: Math.max(100, Math.min(5_000, headersTimeoutMs / 4)),
  };

  const proxyHandler = new Proxy({
    current: () => current,
    instanceId,
    version: GPUGATE_VERSION,
    logger,
    metrics,
    usageSink,
    taskStore: opts.taskStore ?? new MemoryTaskStore(),
    outlier,
    panicThresholdPercent: opts.panicThresholdPercent ?? 0,
    accessLog,
    tracing,
    bodyReadTimeoutMs: opts.bodyReadTimeoutMs ?? 30_000,
  });
  // Fastify's own routes on this port (not the proxy's catch-all), which the front door hands to it.
  const fastifyRoutes = new FastifyRoutes();
  let collectingRoutes = true;

  // No Fastify logger on either port: it would create a child logger per request. The request path
  // logs through `logger` itself, once per event that matters.
  const proxy = Fastify({
    requestIdHeader: false,
    genReqId: requestIdOf,
    exposeHeadRoutes: false,
    return503OnClosing: true,
    // The server Fastify would have made, with the front door in front of Fastify's handler. No
    // request timeout: long SSE streams and large uploads are bounded by the per-backend total
    // timeout instead. https.createServer takes the same listener options as http.createServer.
    serverFactory: (fastifyHandler) => {
      const handler = frontDoor(fastifyHandler, fastifyRoutes, {
        proxyMethods: PROXY_METHODS,
        serve: proxyHandler.serve,
        failed: (_req, res, requestId, err) => proxyHandler.internalError({ res, requestId }, err),
        cors: () => current?.admission.cors ?? null,
        closing: () => draining,
      });
      const server = tlsPair
        ? createHttpsServer(
            {
              cert: tlsPair.cert,
              key: tlsPair.key,
              ...listenerOptions,
              // A TLS handshake is a slow client's first chance: bound it like the headers (Node's
              // default is 120 s, and headersTimeout only starts once the handshake is done).
              handshakeTimeout: headersTimeoutMs,
            },
            handler,
          )
        : createHttpServer(listenerOptions, handler);
      server.keepAliveTimeout = 65_000;
      server.requestTimeout = 0;
      server.setTimeout(0);
      return server;
    },
  });
  proxy.addHook('onRoute', (route) => {
    if (collectingRoutes) fastifyRoutes.add(route.method, route.url);
  });
  proxy.setErrorHandler((err: FastifyError, request, reply) => {
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status >= 500) logger.error({ err, requestId: request.id }, 'proxy error');
    return sendGatewayError(
      reply,
      request.id,
      GPUGATE_VERSION,
      gatewayError(
        status,
        status >= 500 ? 'internal_error' : 'invalid_request_error',
        err.code ?? 'error',
        status >= 500 ? 'internal error' : err.message,
      ),
    );
  });
  await proxy.register(
    usageRoutes({ db: opts.usageDb ?? null, current: () => current, version: GPUGATE_VERSION }),
  );
  await proxy.register(
    registrationRoutes({
      backends: () => current?.backends.map((b) => b.backend) ?? null,
      admission: () => current?.admission ?? null,
      store: opts.registrationStore ?? null,
      logger,
      version: GPUGATE_VERSION,
    }),
  );
  // CORS before routing: preflights are answered here and never reach identity or a backend.
  proxy.addHook(
    'onRequest',
    corsHook(() => current?.admission.cors ?? null, GPUGATE_VERSION),
  );
  collectingRoutes = false;
  await proxy.register(proxyPlugin(proxyHandler));

  const admin = Fastify({
    bodyLimit: 256 * 1024 * 1024,
  });
  await admin.register(adminUsageRoutes({ db: opts.usageDb ?? null, token: opts.admin.token }));
  await admin.register(
    adminViews({
      token: opts.admin.token,
      version: GPUGATE_VERSION,
      instanceId,
      startedAt,
      current: () => current,
      snapshot: () => store.current,
      snapshotAgeMs: () => store.ageMs(),
      admission,
      usageDb: opts.usageDb ?? null,
      features: {
        metering: opts.usageSink !== undefined,
        quota: opts.quota !== undefined,
        usageApi: opts.usageDb !== undefined,
        accessLog: accessLog !== null,
        tracing: tracing !== null,
      },
    }),
  );
  await admin.register(
    adminPlugin({
      registry,
      pushToken: opts.admin.token,
      readiness: () =>
        readiness({
          snapshot: () => store.current,
          snapshotAgeMs: () => store.ageMs(),
          draining: () => draining,
          metering: meteringProbe,
          warmup: () => warmupState,
        }),
      applySnapshot,
      upstreams: () => {
        const now = Date.now();
        return (current?.backends ?? []).map((b) => ({
          backend: b.id,
          policy: b.backend.balancing.policy,
          queued: b.state.waiters.length,
          panicking: b.state.panicking,
          endpoints: b.endpoints.map((e) => UpstreamRegistry.describe(e, now)),
        }));
      },
    }),
  );

  await proxy.listen({ host: opts.listen.host, port: opts.listen.port });
  try {
    await admin.listen({ host: opts.admin.host, port: opts.admin.port });
  } catch (err) {
    await proxy.close();
    throw err;
  }
  const url = urlOf(proxy, tlsPair ? 'https' : 'http');
  const stopTlsWatch =
    opts.tls && tlsPair
      ? watchTlsPair(
          opts.tls,
          tlsPair,
          () => [proxy.server as unknown as TlsServer],
          logger,
          opts.tls.onReload,
          tlsMetrics(registry, tlsPair),
        )
      : () => undefined;
  const adminUrl = urlOf(admin);
  logger.info({ url, adminUrl, instanceId, version: GPUGATE_VERSION }, 'data plane listening');

  // The warm-up runs beside whatever comes next (the first snapshot, the operator's push): it needs
  // neither, and /readyz waits for both.
  const warmupAbort = new AbortController();
  const warmup = warmUp(opts.warmup ?? { requests: 0, budgetMs: 1 }, {
    build: createDataPlane,
    ...(opts.accessLog ? { accessLog: opts.accessLog } : {}),
    logLevel: logger.level as Level | 'silent',
    signal: warmupAbort.signal,
    onOutcome(outcome) {
      warmupState = outcome;
      if (outcome.state === 'done')
        logger.info({ requests: outcome.requests, durationMs: outcome.durationMs }, 'warm-up done');
      else if (outcome.state === 'budget')
        logger.warn(
          { requests: outcome.requests, of: opts.warmup?.requests, durationMs: outcome.durationMs },
          'warm-up stopped by its time budget; serving',
        );
      else if (outcome.state === 'failed')
        logger.warn(
          { requests: outcome.requests, durationMs: outcome.durationMs, error: outcome.error },
          'warm-up failed; serving without it',
        );
    },
  });

  let closing: Promise<void> | null = null;
  async function close(closeOpts: { drainMs?: number } = {}): Promise<void> {
    draining = true;
    warmupAbort.abort();
    stopTlsWatch();
    const drainMs = closeOpts.drainMs ?? 30_000;
    const drained = proxy.close();
    // close() drops connections idle at that moment; keep-alive connections whose last request
    // finishes during the drain become idle later and would hold the server open until the client
    // or keepAliveTimeout closes them.
    const sweeper = setInterval(() => proxy.server.closeIdleConnections(), 50);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), drainMs);
    });
    if ((await Promise.race([drained.then(() => 'drained' as const), deadline])) === 'timeout') {
      logger.warn({ drainMs }, 'drain deadline reached; closing remaining connections');
      proxy.server.closeAllConnections();
      await drained;
    }
    clearTimeout(timer);
    clearInterval(sweeper);
    current?.retire(() => undefined);
    await upstreams.closeAll();
    await tracing?.shutdown().catch(() => undefined);
    // Aborted above: its private plane closes without a drain. Bounded all the same, as the drain is.
    let warmupTimer: NodeJS.Timeout | undefined;
    await Promise.race([warmup, new Promise((resolve) => (warmupTimer = setTimeout(resolve, 5_000)))]);
    clearTimeout(warmupTimer);
    await admin.close();
  }

  return {
    applySnapshot,
    url,
    adminUrl,
    instanceId,
    revision: () => current?.revision ?? null,
    warmup,
    close: (o) => (closing ??= close(o)),
  };
}
