// The proxy scope: one catch-all route on the public port. Bodies arrive as raw streams (no
// content-type parsing here); small JSON bodies are buffered to read their `model` and can then be
// replayed for retries, everything else streams untouched in both directions.
import type { IncomingMessage } from 'node:http';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Route } from '../config/snapshot.ts';
import { backendAllowed, identify, modelAllowed, type Principal } from '../auth/identify.ts';
import { errorBody, gatewayError, type GatewayError } from '../errors.ts';
import { codeClass, type DataPlaneMetrics } from '../metrics/metrics.ts';
import type { UsageSink } from '../metering/usage.ts';
import type { CompiledBackend, Runtime } from '../routing/runtime.ts';
import type { RouteEntry } from '../routing/routes.ts';
import type { TaskStore } from '../tasks/store.ts';
import type { EndpointState } from '../upstream/endpoint.ts';
import { recordOutcome, type OutlierOptions } from '../upstream/health.ts';
import { CLIENT_ABORT, classifyFailure, TOTAL_TIMEOUT } from './failures.ts';
import { downstreamResponseHeaders, upstreamRequestHeaders } from './headers.ts';
import { UsageTap } from './usage-tap.ts';

export interface ProxyDeps {
  current(): Runtime | null;
  instanceId: string;
  version: string;
  logger: Logger;
  metrics: DataPlaneMetrics;
  usageSink: UsageSink | null;
  taskStore: TaskStore;
  outlier: OutlierOptions;
  /** Below this percentage of healthy endpoints, health is ignored (Envoy's panic mode). */
  panicThresholdPercent: number;
}

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];
const MAX_SUBMIT_RESPONSE_BYTES = 1 << 20;
const MAX_HINTED_MODELS = 20;

/** State of one request through the proxy, finished once when the client connection is done with it. */
class Exchange {
  readonly start = performance.now();
  readonly time = Date.now();
  readonly requestId: string;
  readonly rt: Runtime;
  principal: Principal | null = null;
  backend: CompiledBackend | null = null;
  route: Route | null = null;
  endpoint: EndpointState | null = null;
  model: string | null = null;
  ttfbMs: number | null = null;
  bytesIn = 0;
  tap: UsageTap | null = null;
  controller: AbortController | null = null;
  timer: NodeJS.Timeout | null = null;

  constructor(requestId: string, rt: Runtime) {
    this.requestId = requestId;
    this.rt = rt;
  }
}

function baseHeaders(requestId: string, version: string): Record<string, string> {
  return { 'x-request-id': requestId, via: '1.1 gpugate', 'x-gpugate-version': version };
}

function isJson(contentType: string | undefined): boolean {
  return (
    contentType !== undefined && (contentType.startsWith('application/json') || contentType.includes('+json'))
  );
}

/** Reads a body whose length the client declared (Node enforces it). Null when the client went away. */
function readDeclaredBody(req: IncomingMessage, length: number): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.once('end', () =>
      resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, length)),
    );
    req.once('error', () => resolve(null));
    req.once('aborted', () => resolve(null));
  });
}

function peekModel(body: Buffer): string | null {
  try {
    const parsed: unknown = JSON.parse(body.toString('utf8'));
    if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) {
      const model = (parsed as { model?: unknown }).model;
      if (typeof model === 'string' && model !== '') return model;
    }
  } catch {
    // not JSON after all: route by path, forward untouched
  }
  return null;
}

/** Passes a chunked body through until it exceeds the limit, then fails it (the upstream sees an abort). */
class BodyLimit extends Transform {
  #seen = 0;
  readonly #max: number;
  constructor(max: number) {
    super();
    this.#max = max;
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.#seen += chunk.length;
    if (this.#seen > this.#max) done(new Error(`request body exceeds ${this.#max} bytes`));
    else done(null, chunk);
  }
}

/** Models the caller may use: served by name by a backend it may use, and allowed for it. */
export function modelsFor(rt: Runtime, principal: Principal | null): string[] {
  const out: string[] = [];
  for (const [model, backends] of rt.namedModels) {
    if (principal === null) {
      out.push(model);
      continue;
    }
    if (!modelAllowed(principal, model)) continue;
    if (backends.some((b) => backendAllowed(principal, b.id))) out.push(model);
  }
  return out.sort();
}

export function proxyPlugin(deps: ProxyDeps) {
  const viaEntry = `1.1 gpugate (${deps.instanceId})`;
  const viaMarker = `gpugate (${deps.instanceId})`;

  function sendError(reply: FastifyReply, requestId: string, err: GatewayError, close = false): FastifyReply {
    reply
      .code(err.status)
      .headers(baseHeaders(requestId, deps.version))
      .header('content-type', 'application/json');
    if (err.headers) reply.headers(err.headers);
    // The client may still be sending a body we will not read: do not keep the connection.
    if (close) reply.header('connection', 'close');
    return reply.send(errorBody(err, requestId));
  }

  function finish(ex: Exchange, reply: FastifyReply): void {
    const res = reply.raw;
    const aborted = !res.writableFinished;
    if (aborted && ex.controller && !ex.controller.signal.aborted) ex.controller.abort(CLIENT_ABORT);
    if (ex.timer) clearTimeout(ex.timer);
    ex.rt.leave();
    // 499 (client closed request, as nginx logs it) when the client left before the end.
    const status = aborted ? 499 : res.statusCode;
    const seconds = (performance.now() - ex.start) / 1000;
    const children = ex.backend ? ex.backend.metrics : deps.metrics.requestChildren('');
    children.byClass[codeClass(status)].inc();
    children.duration.observe(seconds);
    if (deps.usageSink && ex.principal) emitUsage(ex, status, seconds);
  }

  function emitUsage(ex: Exchange, status: number, seconds: number): void {
    const b = ex.backend;
    const openai = b?.backend.protocol === 'openai';
    const reported = openai && ex.tap ? ex.tap.usage() : null;
    const bytesOut = ex.tap?.bytes ?? 0;
    // Rough estimate when the backend reported nothing: ~4 bytes per token.
    const inputTokens = reported ? reported.inputTokens : openai ? Math.ceil(ex.bytesIn / 4) : 0;
    const outputTokens = reported ? reported.outputTokens : openai ? Math.ceil(bytesOut / 4) : 0;
    let credits = 0;
    if (b && status < 400) {
      const p = b.backend.pricing;
      credits =
        p.perRequest +
        (ex.route?.cost ?? 0) +
        inputTokens * p.perInputToken +
        outputTokens * p.perOutputToken;
    }
    const principal = ex.principal as Principal;
    try {
      deps.usageSink?.record({
        requestId: ex.requestId,
        time: ex.time,
        tenant: principal.tenant.id,
        keyId: principal.key?.id ?? null,
        userId: principal.userId,
        backend: b?.id ?? null,
        endpoint: ex.endpoint?.id ?? null,
        route: ex.route?.pathPrefix ?? null,
        model: ex.model,
        status,
        inputTokens,
        outputTokens,
        tokensEstimated: openai && reported === null,
        bytesIn: ex.bytesIn,
        bytesOut,
        durationMs: Math.round(seconds * 1000),
        ttfbMs: ex.ttfbMs,
        credits,
      });
    } catch (err) {
      deps.logger.error({ err, requestId: ex.requestId }, 'usage sink threw; event dropped');
    }
  }

  /** Healthy endpoints below their in-flight limit, not yet tried; waits in the backend's queue when all are full. */
  async function pickEndpoint(
    cb: CompiledBackend,
    tried: readonly EndpointState[],
    signal: AbortSignal,
  ): Promise<EndpointState | GatewayError> {
    const { maxInflightPerEndpoint: maxInflight, maxQueue, queueTimeoutMs } = cb.backend.balancing;
    const deadline = performance.now() + queueTimeoutMs;
    for (;;) {
      const now = Date.now();
      let ready = 0;
      let healthy = 0;
      const candidates: EndpointState[] = [];
      for (const e of cb.endpoints) {
        if (!e.ready) continue;
        ready++;
        if (!e.healthy(now)) continue;
        healthy++;
        if (tried.includes(e) || (maxInflight > 0 && e.inflight >= maxInflight)) continue;
        candidates.push(e);
      }
      if (ready === 0) {
        return gatewayError(
          503,
          'overloaded_error',
          'no_endpoints',
          `backend ${cb.id} has no ready endpoints`,
          {
            'retry-after': '5',
          },
        );
      }
      if (healthy === 0 || (healthy * 100) / ready < deps.panicThresholdPercent) {
        // Panic: too few healthy endpoints. Ignore health rather than fail everything, and say so.
        deps.metrics.panics(cb.id).inc();
        if (healthy === 0)
          deps.logger.warn(
            { backend: cb.id, ready },
            'no healthy endpoint: panic routing to all ready endpoints',
          );
        for (const e of cb.endpoints) {
          if (
            e.ready &&
            !e.healthy(now) &&
            !tried.includes(e) &&
            (maxInflight === 0 || e.inflight < maxInflight)
          ) {
            candidates.push(e);
          }
        }
      }
      if (candidates.length > 0) return cb.balancer.pick(candidates, now);
      const remaining = deadline - performance.now();
      const anyFull =
        maxInflight > 0 &&
        cb.endpoints.some((e) => e.ready && !tried.includes(e) && e.inflight >= maxInflight);
      if (!anyFull) {
        return gatewayError(
          502,
          'upstream_error',
          'no_endpoint_left',
          `every endpoint of backend ${cb.id} failed`,
        );
      }
      if (cb.state.waiters.length >= maxQueue || remaining <= 0) {
        deps.metrics.queueRejections(cb.id).inc();
        return gatewayError(
          503,
          'overloaded_error',
          'endpoints_busy',
          `every endpoint of backend ${cb.id} is at its in-flight limit (${maxInflight}); retry later`,
          { 'retry-after': String(Math.max(1, Math.ceil(queueTimeoutMs / 1000))) },
        );
      }
      await cb.state.wait(remaining, signal);
      if (signal.aborted)
        return gatewayError(499, 'invalid_request_error', 'client_closed', 'client closed the request');
    }
  }

  function chooseBackend(
    entries: readonly RouteEntry<CompiledBackend>[],
    model: string | null,
    principal: Principal | null,
    rt: Runtime,
  ): RouteEntry<CompiledBackend> | GatewayError {
    let serving: readonly RouteEntry<CompiledBackend>[] = entries;
    if (model !== null) {
      // Exact model names win over '*' backends; within each, the longest prefix (entries' order).
      serving = entries.filter((e) => e.backend.models.has(model));
      if (serving.length === 0) serving = entries.filter((e) => e.backend.anyModel);
      if (serving.length === 0) {
        const models = modelsFor(rt, principal);
        const shown = models.slice(0, MAX_HINTED_MODELS).join(', ');
        return gatewayError(
          404,
          'not_found_error',
          'unknown_model',
          `model ${JSON.stringify(model)} is not served on this path; models you may use: ${shown || '(none)'}${models.length > MAX_HINTED_MODELS ? ', …' : ''}`,
        );
      }
      if (principal && !modelAllowed(principal, model)) {
        return gatewayError(
          403,
          'permission_error',
          'model_not_allowed',
          `model ${JSON.stringify(model)} is not allowed for this tenant or key`,
        );
      }
    }
    if (principal) {
      const allowed = serving.filter((e) => backendAllowed(principal, e.backend.id));
      if (allowed.length === 0) {
        return gatewayError(
          403,
          'permission_error',
          'backend_not_allowed',
          `tenant ${principal.tenant.id} may not use the backend serving this request`,
        );
      }
      return allowed[0] as RouteEntry<CompiledBackend>;
    }
    return serving[0] as RouteEntry<CompiledBackend>;
  }

  async function handle(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const req = request.raw;
    const requestId = request.id;
    const rt = deps.current();
    if (!rt)
      return sendError(
        reply,
        requestId,
        gatewayError(503, 'overloaded_error', 'not_ready', 'the gateway has no configuration yet', {
          'retry-after': '1',
        }),
      );
    const via = req.headers.via;
    if (via !== undefined && via.includes(viaMarker)) {
      return sendError(
        reply,
        requestId,
        gatewayError(
          508,
          'loop_detected',
          'loop_detected',
          'the request already passed through this gateway',
        ),
      );
    }
    rt.enter();
    const ex = new Exchange(requestId, rt);
    reply.raw.once('close', () => finish(ex, reply));

    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const method = req.method ?? 'GET';

    if (path === '/v1/models' && (method === 'GET' || method === 'HEAD')) return listModels(ex, reply);

    let entries = rt.routes.match(path, method);
    if (entries === null) {
      return sendError(
        reply,
        requestId,
        gatewayError(404, 'not_found_error', 'unknown_path', `no route for ${path}`),
      );
    }
    if (entries.length === 0) {
      return sendError(
        reply,
        requestId,
        gatewayError(
          405,
          'invalid_request_error',
          'method_not_allowed',
          `${method} is not allowed on ${path}`,
        ),
      );
    }
    // The longest matching prefix decides whether the request is public; a public request may only
    // reach public routes.
    const longest = (entries[0] as RouteEntry<CompiledBackend>).route.pathPrefix;
    if (entries.every((e) => e.route.pathPrefix !== longest || e.route.public)) {
      entries = entries.filter((e) => e.route.public);
    } else {
      const who = identify(req.headers, rt.keys, Date.now());
      if (!who.ok) return sendError(reply, requestId, who.error, true);
      ex.principal = who.principal;
    }

    const headers = req.headers;
    const cl = headers['content-length'];
    const contentLength = cl === undefined ? -1 : Number(cl);
    const chunked = headers['transfer-encoding'] !== undefined;
    const hasBody = contentLength > 0 || chunked;
    const modelHeader = headers['x-gpugate-model'];
    let model = typeof modelHeader === 'string' && modelHeader !== '' ? modelHeader : null;
    let buffered: Buffer | null = null;
    if (
      contentLength > 0 &&
      contentLength <= rt.settings.maxJsonPeekBytes &&
      isJson(headers['content-type'])
    ) {
      buffered = await readDeclaredBody(req, contentLength);
      if (buffered === null) return reply; // the client went away mid-body
      model = peekModel(buffered) ?? model;
    }
    ex.model = model;
    ex.bytesIn = contentLength > 0 ? contentLength : 0;

    let pinned: EndpointState | null = null;
    let entry: RouteEntry<CompiledBackend> | GatewayError;
    const task = await findTask(entries, path);
    if (task) {
      if ('status' in task) return sendError(reply, requestId, task, !buffered && hasBody);
      const tenant = ex.principal?.tenant.id ?? '';
      const e = task.entry.backend.byEndpointId.get(task.endpointId);
      if (task.tenant !== tenant || !e) {
        return sendError(
          reply,
          requestId,
          gatewayError(404, 'not_found_error', 'unknown_task', 'no such task'),
          !buffered && hasBody,
        );
      }
      entry = task.entry;
      pinned = e;
    } else {
      entry = chooseBackend(entries, model, ex.principal, rt);
    }
    if ('status' in entry) return sendError(reply, requestId, entry, !buffered && hasBody);
    const cb = entry.backend;
    ex.backend = cb;
    ex.route = entry.route;
    const backend = cb.backend;
    if (contentLength > backend.maxRequestBytes) {
      return sendError(
        reply,
        requestId,
        gatewayError(
          413,
          'request_too_large',
          'request_too_large',
          `request body of ${contentLength} bytes exceeds the ${backend.maxRequestBytes} bytes backend ${cb.id} accepts`,
        ),
        true,
      );
    }
    let body: Buffer | Readable | null = buffered;
    if (!buffered && hasBody) {
      if (contentLength < 0) {
        const limited = new BodyLimit(backend.maxRequestBytes);
        req.pipe(limited);
        body = limited;
      } else {
        body = req;
      }
    }

    const controller = new AbortController();
    ex.controller = controller;
    const signal = controller.signal;
    const { firstByteMs, totalMs } = backend.timeouts;
    if (totalMs > 0) ex.timer = setTimeout(() => controller.abort(TOTAL_TIMEOUT), totalMs);

    const upstreamHeaders = upstreamRequestHeaders(headers, {
      requestId,
      clientIp: req.socket.remoteAddress ?? '',
      proto: 'http',
      via: viaEntry,
      identity: {
        tenant: ex.principal?.tenant.id ?? null,
        userId: ex.principal?.userId ?? null,
        userName: ex.principal?.userName ?? null,
      },
      upstreamAuth: backend.upstreamAuth,
    });
    const replayable = body === null || buffered !== null;
    const attempts = 1 + (replayable && pinned === null ? backend.retries.attempts : 0);
    const tried: EndpointState[] = [];
    let lastError: GatewayError | null = null;
    for (let attempt = 0; attempt < attempts; attempt++) {
      let e: EndpointState;
      if (pinned) {
        e = pinned;
      } else {
        const picked = await pickEndpoint(cb, tried, signal);
        if ('status' in picked) {
          if (signal.aborted) return reply;
          return sendError(reply, requestId, lastError ?? picked, body !== null && !replayable);
        }
        e = picked;
      }
      if (attempt > 0) deps.metrics.retries(cb.id).inc();
      tried.push(e);
      e.acquire();
      let upstream;
      try {
        upstream = await e.pool.request({
          path: e.basePath + url,
          method,
          headers: upstreamHeaders,
          body,
          signal,
          headersTimeout: firstByteMs,
          // The total timer bounds the whole exchange; no separate idle limit between chunks.
          bodyTimeout: 0,
        });
      } catch (err) {
        e.release();
        if (signal.reason === CLIENT_ABORT) return reply;
        const failure = classifyFailure(err, signal.reason, cb.id);
        deps.metrics.upstreamErrors(cb.id, failure.kind).inc();
        if (failure.endpointFault) recordOutcome(e, true, Date.now(), deps.outlier, onEject);
        lastError = failure.error;
        deps.logger.warn(
          { requestId, backend: cb.id, endpoint: e.id, kind: failure.kind, err: (err as Error).message },
          'upstream attempt failed',
        );
        if (!failure.reached && attempt + 1 < attempts) continue;
        break;
      }
      const status = upstream.statusCode;
      recordOutcome(e, status >= 500, Date.now(), deps.outlier, onEject);
      if (attempt + 1 < attempts && cb.retryOnStatus.has(status)) {
        // The backend said it did not take the request (e.g. 503 overloaded): try another endpoint.
        upstream.body.destroy();
        e.release();
        deps.metrics.upstreamErrors(cb.id, 'status').inc();
        lastError = null;
        continue;
      }
      ex.endpoint = e;
      ex.ttfbMs = Math.round(performance.now() - ex.start);
      if (upstream.headers['x-gpugate-version'] !== undefined) e.gateway = true;
      const upstreamBody = upstream.body;
      upstreamBody.once('close', () => e.release());
      const contentType = upstream.headers['content-type'];
      const tap = new UsageTap(
        typeof contentType === 'string' ? contentType : undefined,
        backend.protocol === 'openai',
      );
      ex.tap = tap;
      reply.code(status).headers(
        downstreamResponseHeaders(upstream.headers, {
          requestId,
          version: deps.version,
          backend: rt.settings.exposeBackendHeader ? cb.id : null,
        }),
      );
      const asyncTasks = backend.asyncTasks;
      if (asyncTasks && status < 300 && method === 'POST' && path.startsWith(asyncTasks.submitPathPrefix)) {
        // Submit responses are small JSON: read them whole so the task is recorded before the client
        // can ask for its status.
        const text = await readBounded(upstreamBody, MAX_SUBMIT_RESPONSE_BYTES, tap);
        if (text === null) {
          if (signal.reason === CLIENT_ABORT) return reply;
          return sendError(
            reply,
            requestId,
            gatewayError(
              502,
              'upstream_error',
              'bad_submit_response',
              `backend ${cb.id} sent a task submit response that could not be read whole`,
            ),
          );
        }
        await recordTask(
          text,
          asyncTasks.taskIdField,
          asyncTasks.ttlMs,
          cb,
          e,
          ex.principal?.tenant.id ?? '',
          requestId,
        );
        reply.removeHeader('content-length');
        return reply.send(text);
      }
      upstreamBody.on('data', tap.onData);
      return reply.send(upstreamBody);
    }
    if (signal.reason === CLIENT_ABORT) return reply;
    return sendError(
      reply,
      requestId,
      lastError ?? gatewayError(502, 'upstream_error', 'upstream_failed', `backend ${cb.id} failed`),
      body !== null && !replayable,
    );
  }

  function onEject(e: EndpointState, forMs: number): void {
    deps.metrics.ejections(e.backendId).inc();
    deps.logger.warn(
      { backend: e.backendId, endpoint: e.id, forMs },
      'endpoint ejected after consecutive failures',
    );
  }

  async function findTask(
    entries: readonly RouteEntry<CompiledBackend>[],
    path: string,
  ): Promise<
    { entry: RouteEntry<CompiledBackend>; endpointId: string; tenant: string } | GatewayError | null
  > {
    for (const entry of entries) {
      for (const pattern of entry.backend.taskPatterns) {
        const m = pattern.exec(path);
        if (!m) continue;
        const taskId = decodeURIComponent(m[1] as string);
        const rec = await deps.taskStore.lookup(taskId).catch(() => undefined);
        if (rec === undefined) {
          return gatewayError(
            503,
            'overloaded_error',
            'task_store_unavailable',
            'the task store is unavailable; retry',
            { 'retry-after': '1' },
          );
        }
        if (rec === null) return gatewayError(404, 'not_found_error', 'unknown_task', 'no such task');
        const owner = entries.find((x) => x.backend.id === rec.backend);
        if (!owner) return gatewayError(404, 'not_found_error', 'unknown_task', 'no such task');
        return { entry: owner, endpointId: rec.endpointId, tenant: rec.tenant };
      }
    }
    return null;
  }

  async function recordTask(
    text: Buffer,
    field: string,
    ttlMs: number,
    cb: CompiledBackend,
    e: EndpointState,
    tenant: string,
    requestId: string,
  ): Promise<void> {
    let taskId: unknown;
    try {
      taskId = (JSON.parse(text.toString('utf8')) as Record<string, unknown>)[field];
    } catch {
      taskId = undefined;
    }
    if (typeof taskId !== 'string' && typeof taskId !== 'number') {
      deps.logger.warn({ requestId, backend: cb.id, field }, 'submit response has no task id field');
      return;
    }
    await deps.taskStore.record(String(taskId), cb.id, e.id, tenant, ttlMs).catch((err: unknown) => {
      deps.logger.error({ requestId, backend: cb.id, err }, 'could not record async task');
    });
  }

  function listModels(ex: Exchange, reply: FastifyReply): FastifyReply {
    const who = identify(reply.request.raw.headers, ex.rt.keys, Date.now());
    if (!who.ok) return sendError(reply, ex.requestId, who.error);
    ex.principal = who.principal;
    const data = modelsFor(ex.rt, who.principal).map((id) => ({
      id,
      object: 'model',
      created: 0,
      owned_by: 'gpugate',
    }));
    reply
      .code(200)
      .headers(baseHeaders(ex.requestId, deps.version))
      .header('content-type', 'application/json');
    return reply.send(JSON.stringify({ object: 'list', data }));
  }

  return async function proxy(app: FastifyInstance): Promise<void> {
    app.removeAllContentTypeParsers();
    // Every body stays a raw stream: the handler decides what to buffer.
    app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
    app.route({ method: METHODS, url: '/*', handler: handle });
    app.route({ method: METHODS, url: '/', handler: handle });
  };
}

function readBounded(body: Readable, max: number, tap: UsageTap): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    body.on('data', (c: Buffer) => {
      tap.onData(c);
      size += c.length;
      if (size > max) {
        body.destroy();
        resolve(null);
        return;
      }
      chunks.push(c);
    });
    body.once('end', () => resolve(Buffer.concat(chunks)));
    body.once('error', () => resolve(null));
  });
}
