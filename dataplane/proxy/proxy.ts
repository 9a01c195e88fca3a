// The proxy: every request on the public port that is not one of Fastify's own. The port's front
// door (dataplane/http/front-door.ts) calls `serve` directly; what it hands to Fastify reaches the
// same `serve` through this file's catch-all scope. Bodies arrive as raw streams (no content-type
// parsing); small JSON bodies are buffered to read their `model` and can then be replayed for
// retries, everything else streams untouched in both directions.
//
// Forwarding uses undici's dispatch API straight into the Node response: response headers are
// written when the upstream's arrive, every body chunk is written as it arrives (SSE passes through
// chunk by chunk) with backpressure from the client pausing the upstream. This avoids an
// intermediate Readable and Fastify's stream piping on the hot path.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import type { Route } from '../config/snapshot.ts';
import type { Admitted } from '../admission/admission.ts';
import { backendAllowed, modelAllowed, type Principal } from '../auth/identify.ts';
import { errorBody, gatewayError, gatewayHeaders, type GatewayError } from '../errors.ts';
import { codeClass, type DataPlaneMetrics } from '../metrics/metrics.ts';
import { PUBLIC_TENANT, type UsageSink } from '../metering/usage.ts';
import { servesOnlyAllowedModels, type CompiledBackend, type Runtime } from '../routing/runtime.ts';
import type { RouteEntry, RouteMatch } from '../routing/routes.ts';
import type { TaskStore } from '../metering/tasks.ts';
import type { EndpointState } from '../upstream/endpoint.ts';
import { recordOutcome, type OutlierOptions } from '../upstream/health.ts';
import { CLIENT_ABORT, classifyFailure, TOTAL_TIMEOUT } from './failures.ts';
import { downstreamResponseHeaders, upstreamRequestHeaders } from './headers.ts';
import { traceIdOf, type AccessLog } from '../observability/access-log.ts';
import type { RequestTrace, Tracing } from '../observability/tracing.ts';
import { askForStreamUsage, parseJsonRequest, UsageChunkFilter, UsageTap } from './usage-tap.ts';

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
  /** One line per request; null: none. */
  accessLog: AccessLog | null;
  /** OpenTelemetry spans; null (the default): tracing is off and costs nothing. */
  tracing: Tracing | null;
  /** A small JSON body the gateway reads itself must arrive within this time (else 408). */
  bodyReadTimeoutMs: number;
}

/** The methods the proxy takes; the public port's front door hands others to Fastify. */
export const PROXY_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];
const MAX_SUBMIT_RESPONSE_BYTES = 1 << 20;
const MAX_HINTED_MODELS = 20;
/** Abort reason for an attempt dropped because its status is retried elsewhere. */
const RETRY_ELSEWHERE = new Error('retrying on another endpoint');

function isJson(contentType: string | undefined): boolean {
  return (
    contentType !== undefined && (contentType.startsWith('application/json') || contentType.includes('+json'))
  );
}

const BODY_READ = Symbol('bodyRead');
type Reading = IncomingMessage & { [BODY_READ]?: BodyRead };

/** A declared-length body being read: listeners are shared functions, the state hangs off the request. */
class BodyRead {
  readonly chunks: Buffer[] = [];
  readonly length: number;
  readonly timer: NodeJS.Timeout;
  readonly #resolve: (read: Buffer | null | 'timeout') => void;
  #settled = false;

  constructor(
    req: Reading,
    length: number,
    timeoutMs: number,
    resolve: (read: Buffer | null | 'timeout') => void,
  ) {
    this.length = length;
    this.#resolve = resolve;
    this.timer = setTimeout(onBodyTimeout, timeoutMs, req);
  }

  settle(read: Buffer | null | 'timeout'): void {
    if (this.#settled) return;
    this.#settled = true;
    clearTimeout(this.timer);
    this.#resolve(read);
  }
}

function onBodyData(this: Reading, chunk: Buffer): void {
  this[BODY_READ]?.chunks.push(chunk);
}

function onBodyEnd(this: Reading): void {
  const read = this[BODY_READ];
  if (!read) return;
  const { chunks } = read;
  read.settle(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, read.length));
}

function onBodyGone(this: Reading): void {
  this[BODY_READ]?.settle(null);
}

function onBodyTimeout(req: Reading): void {
  req.removeAllListeners('data');
  req[BODY_READ]?.settle('timeout');
}

/**
 * Reads a body whose length the client declared (Node enforces it), within timeoutMs. Null when the
 * client went away, 'timeout' when it did not finish sending in time.
 */
function readDeclaredBody(
  req: IncomingMessage,
  length: number,
  timeoutMs: number,
): Promise<Buffer | null | 'timeout'> {
  return new Promise((resolve) => {
    const reading = req as Reading;
    reading[BODY_READ] = new BodyRead(reading, length, timeoutMs, resolve);
    req.on('data', onBodyData);
    req.on('end', onBodyEnd);
    req.on('error', onBodyGone);
    req.on('aborted', onBodyGone);
  });
}

function modelOf(request: Readonly<Record<string, unknown>> | null): string | null {
  const model = request?.model;
  return typeof model === 'string' && model !== '' ? model : null;
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

const EXCHANGE = Symbol('exchange');
type Answering = ServerResponse & { [EXCHANGE]?: Exchange };

/** The response is done or the client went away: the request's accounting (one shared listener). */
function onResponseClose(this: Answering): void {
  const ex = this[EXCHANGE];
  if (ex) ex.proxy.finish(ex);
}

/** One upstream attempt: the undici dispatch handler, forwarding events to its exchange. */
class Attempt implements Dispatcher.DispatchHandler {
  readonly ex: Exchange;
  readonly endpoint: EndpointState;
  controller: Dispatcher.DispatchController | null = null;
  #released = false;

  constructor(ex: Exchange, endpoint: EndpointState) {
    this.ex = ex;
    this.endpoint = endpoint;
    endpoint.acquire();
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.endpoint.release();
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    const reason = this.ex.abortReason;
    if (reason) controller.abort(reason);
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    status: number,
    headers: Record<string, string | string[] | undefined>,
  ): void {
    this.ex.onUpstreamHeaders(this, controller, status, headers);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.ex.onUpstreamData(this, controller, chunk);
  }

  onResponseEnd(): void {
    this.ex.onUpstreamEnd(this);
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.ex.onUpstreamError(this, err);
  }
}

/**
 * Runs after the read that carried the upstream's head: when no body bytes came with it, sends the
 * head now; else it already left with the first chunk (one write, as before).
 */
function flushHeadAlone(ex: Exchange): void {
  if ((ex.tap as UsageTap).bytes === 0 && !ex.res.writableEnded) ex.res.flushHeaders();
}

/** State of one request through the proxy. */
class Exchange {
  readonly start = performance.now();
  readonly time = Date.now();
  readonly requestId: string;
  readonly rt: Runtime;
  readonly proxy: Proxy;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  principal: Principal | null = null;
  /** A request to a public route (no credentials): metered under PUBLIC_TENANT. */
  publicRoute = false;
  /** Rate-limit and quota admission; ended once with the usage when the request ends. */
  admitted: Admitted | null = null;
  backend: CompiledBackend | null = null;
  route: Route | null = null;
  endpoint: EndpointState | null = null;
  model: string | null = null;
  ttfbMs: number | null = null;
  bytesIn = 0;
  tap: UsageTap | null = null;
  timer: NodeJS.Timeout | null = null;
  abortReason: Error | null = null;
  /** Created only when the request waits in a backend queue. */
  queueAbort: AbortController | null = null;
  // forwarding
  path = '';
  method = '';
  url = '';
  body: Buffer | Readable | null = null;
  replayable = true;
  upstreamHeaders: Record<string, string> = {};
  attemptsLeft = 0;
  tried: EndpointState[] = [];
  pinned: EndpointState | null = null;
  current: Attempt | null = null;
  lastError: GatewayError | null = null;
  headersSent = false;
  /** Submit responses are held whole until the task id is recorded. */
  held: Buffer[] | null = null;
  /** The gateway asked the backend for stream usage the client did not ask for: keep that chunk from it. */
  stripUsage = false;
  sseFilter: UsageChunkFilter | null = null;
  heldBytes = 0;
  heldStatus = 0;
  heldHeaders: Record<string, string | string[] | undefined> = {};
  trace: RequestTrace | null = null;
  /** 'admitted' or the admission refusal's code, for the access log. */
  limits: string | null = null;
  /** The code of the error the gateway answered with, if it did. */
  error: string | null = null;
  upstreamStatus: number | undefined = undefined;
  /** Response body bytes still to come when the upstream declared its length (-1: not known or filtered). */
  bodyLeft = -1;
  #waitingDrain = false;

  constructor(proxy: Proxy, requestId: string, rt: Runtime, req: IncomingMessage, res: ServerResponse) {
    this.proxy = proxy;
    this.requestId = requestId;
    this.rt = rt;
    this.req = req;
    this.res = res;
  }

  abort(reason: Error): void {
    if (this.abortReason) return;
    this.abortReason = reason;
    this.current?.controller?.abort(reason);
    this.queueAbort?.abort(reason);
  }

  /**
   * Picks an endpoint and dispatches, synchronously unless every endpoint is full: then the request
   * waits in the backend's queue first.
   */
  next(): void {
    if (this.abortReason) return this.failBeforeHeaders();
    const cb = this.backend as CompiledBackend;
    const e = this.pinned ?? this.proxy.pickEndpoint(cb, this.tried);
    if (e === 'wait') {
      this.waitForEndpoint(cb).catch((err: unknown) => this.proxy.internalError(this, err));
      return;
    }
    this.use(e);
  }

  async waitForEndpoint(cb: CompiledBackend): Promise<void> {
    for (;;) {
      this.queueAbort ??= new AbortController();
      const remaining = cb.backend.balancing.queueTimeoutMs - (performance.now() - this.start);
      const woken = remaining > 0 && (await cb.state.wait(remaining, this.queueAbort.signal));
      if (this.abortReason) return this.failBeforeHeaders();
      if (!woken) return this.use(this.proxy.queueFull(cb));
      const e = this.pinned ?? this.proxy.pickEndpoint(cb, this.tried);
      if (e !== 'wait') return this.use(e);
    }
  }

  use(e: EndpointState | GatewayError): void {
    if ('status' in e) {
      this.lastError ??= e;
      return this.failBeforeHeaders();
    }
    this.dispatch(e);
  }

  dispatch(e: EndpointState): void {
    const cb = this.backend as CompiledBackend;
    if (this.tried.length > 0) this.proxy.deps.metrics.retries(cb.id).inc();
    this.tried.push(e);
    this.attemptsLeft--;
    const attempt = new Attempt(this, e);
    this.current = attempt;
    this.trace?.upstream(this.upstreamHeaders, {
      'gpugate.backend': cb.id,
      'gpugate.endpoint': e.id,
      'server.address': e.origin,
      'gpugate.attempt': this.tried.length,
    });
    e.pool.dispatch(
      {
        origin: e.origin,
        path: e.basePath + this.url,
        method: this.method as Dispatcher.HttpMethod,
        headers: this.upstreamHeaders,
        body: this.body,
        headersTimeout: cb.backend.timeouts.firstByteMs,
        // The total timer bounds the whole exchange; no separate idle limit between chunks.
        bodyTimeout: 0,
      },
      attempt,
    );
  }

  onUpstreamHeaders(
    attempt: Attempt,
    controller: Dispatcher.DispatchController,
    status: number,
    headers: Record<string, string | string[] | undefined>,
  ): void {
    if (attempt !== this.current) return;
    const cb = this.backend as CompiledBackend;
    const e = attempt.endpoint;
    if (status >= 500) e.lastFailure = { kind: 'status', message: `answered ${status}`, at: Date.now() };
    recordOutcome(e, status >= 500, Date.now(), this.proxy.deps.outlier, this.proxy.onEject);
    this.upstreamStatus = status;
    if (
      this.attemptsLeft > 0 &&
      cb.retryOnStatus.has(status) &&
      !this.abortReason &&
      this.untriedEndpointLeft(cb)
    ) {
      // The backend said it did not take the request (e.g. 503 overloaded): try another endpoint.
      this.proxy.deps.metrics.upstreamErrors(cb.id, 'status').inc();
      this.trace?.endUpstream(status);
      this.current = null;
      controller.abort(RETRY_ELSEWHERE);
      attempt.release();
      this.next();
      return;
    }
    this.endpoint = e;
    this.ttfbMs = Math.round(performance.now() - this.start);
    if (headers['x-gpugate-version'] !== undefined) e.gateway = true;
    const contentType = headers['content-type'];
    this.tap = new UsageTap(
      typeof contentType === 'string' ? contentType : undefined,
      cb.backend.protocol === 'openai',
    );
    if (
      this.stripUsage &&
      typeof contentType === 'string' &&
      contentType.includes('text/event-stream') &&
      headers['content-length'] === undefined
    ) {
      this.sseFilter = new UsageChunkFilter();
    }
    const asyncTasks = cb.backend.asyncTasks;
    if (
      asyncTasks &&
      status < 300 &&
      this.method === 'POST' &&
      this.path.startsWith(asyncTasks.submitPathPrefix)
    ) {
      this.held = [];
      this.heldStatus = status;
      this.heldHeaders = headers;
      return;
    }
    // Set only once writeHead succeeded: headers Node refuses to send (undici's parser is more
    // lenient) fail the attempt before any byte went out, and the client gets a JSON 502.
    this.res.writeHead(
      status,
      this.proxy.responseHeaders(headers, this.requestId, this.rt, cb, this.admitted),
    );
    this.headersSent = true;
    const length = headers['content-length'];
    // undici's parser holds the body to this length, so the chunk that reaches it is the last one.
    if (typeof length === 'string' && this.sseFilter === null && this.method !== 'HEAD')
      this.bodyLeft = Number(length);
    // Node sends a head with the first body write. A streamed body's first chunk may be far off (vLLM
    // sends its head before prefill): then the head goes on alone, as the backend sent it.
    if (length === undefined) process.nextTick(flushHeadAlone, this);
  }

  untriedEndpointLeft(cb: CompiledBackend): boolean {
    for (const e of cb.endpoints) if (e.ready && !this.tried.includes(e)) return true;
    return false;
  }

  onUpstreamData(attempt: Attempt, controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (attempt !== this.current) return;
    (this.tap as UsageTap).onData(chunk);
    if (this.held) {
      this.heldBytes += chunk.length;
      if (this.heldBytes > MAX_SUBMIT_RESPONSE_BYTES) {
        controller.abort(new Error('submit response too large to record'));
        return;
      }
      this.held.push(chunk);
      return;
    }
    let out: Buffer | string = chunk;
    if (this.sseFilter) {
      out = this.sseFilter.push(chunk);
      if (out.length === 0) return;
    }
    if (this.bodyLeft > 0) {
      this.bodyLeft -= out.length;
      // The whole body is here: one end(chunk), which Node sends with its finish in one step,
      // instead of write(chunk) and an end() that sends and schedules again.
      if (this.bodyLeft === 0) {
        this.res.end(out);
        return;
      }
    }
    if (!this.res.write(out) && !this.#waitingDrain) {
      // The client reads slower than the upstream sends: stop reading the upstream until it drains.
      this.#waitingDrain = true;
      controller.pause();
      this.res.once('drain', () => {
        this.#waitingDrain = false;
        controller.resume();
      });
    }
  }

  onUpstreamEnd(attempt: Attempt): void {
    if (attempt !== this.current) return;
    attempt.release();
    this.trace?.endUpstream(this.upstreamStatus);
    if (this.held) {
      void this.finishSubmit();
      return;
    }
    if (this.res.writableEnded) return; // the last chunk ended it
    const rest = this.sseFilter?.flush();
    if (rest) this.res.end(rest);
    else this.res.end();
  }

  onUpstreamError(attempt: Attempt, err: Error): void {
    attempt.release();
    if (attempt !== this.current) return;
    this.current = null;
    this.trace?.endUpstream(undefined, err.message);
    const cb = this.backend as CompiledBackend;
    if (this.headersSent) {
      // Bytes already reached the client: nothing to retry or to answer; cut the response.
      if (this.abortReason !== CLIENT_ABORT) {
        this.proxy.deps.logger.warn(
          { requestId: this.requestId, backend: cb.id, err: err.message },
          'upstream failed mid-response',
        );
      }
      this.res.destroy();
      return;
    }
    if (this.abortReason === CLIENT_ABORT) return;
    const failure = classifyFailure(err, this.abortReason, cb.id);
    const deps = this.proxy.deps;
    deps.metrics.upstreamErrors(cb.id, failure.kind).inc();
    if (failure.endpointFault) {
      attempt.endpoint.lastFailure = { kind: failure.kind, message: err.message, at: Date.now() };
      recordOutcome(attempt.endpoint, true, Date.now(), deps.outlier, this.proxy.onEject);
    }
    this.lastError = failure.error;
    deps.logger.warn(
      {
        requestId: this.requestId,
        backend: cb.id,
        endpoint: attempt.endpoint.id,
        kind: failure.kind,
        err: err.message,
      },
      'upstream attempt failed',
    );
    if (!failure.reached && this.attemptsLeft > 0 && this.replayable && !this.abortReason) {
      this.held = null;
      this.heldBytes = 0;
      this.next();
      return;
    }
    this.failBeforeHeaders();
  }

  failBeforeHeaders(): void {
    if (this.abortReason === CLIENT_ABORT || this.res.headersSent) return;
    const err =
      this.abortReason === TOTAL_TIMEOUT
        ? classifyFailure(null, TOTAL_TIMEOUT, this.backend?.id ?? '').error
        : (this.lastError ?? gatewayError(502, 'upstream_error', 'upstream_failed', 'the backend failed'));
    this.proxy.writeError(this, err, this.body !== null && !this.replayable);
  }

  async finishSubmit(): Promise<void> {
    const cb = this.backend as CompiledBackend;
    const asyncTasks = cb.backend.asyncTasks;
    const body = Buffer.concat(this.held as Buffer[]);
    if (asyncTasks && this.endpoint) {
      await this.proxy.recordTask(
        body,
        asyncTasks.taskIdField,
        asyncTasks.ttlMs,
        cb,
        this.endpoint,
        this.principal?.tenant.id ?? '',
        this.requestId,
      );
    }
    if (this.res.destroyed) return;
    const headers = this.proxy.responseHeaders(this.heldHeaders, this.requestId, this.rt, cb, this.admitted);
    headers['content-length'] = body.length;
    delete headers['transfer-encoding'];
    this.headersSent = true;
    this.res.writeHead(this.heldStatus, headers);
    this.res.end(body);
  }
}

/** The proxy's request handling, bound to its dependencies once. */
export class Proxy {
  readonly deps: ProxyDeps;
  readonly viaEntry: string;
  readonly viaMarker: string;

  constructor(deps: ProxyDeps) {
    this.deps = deps;
    this.viaEntry = `1.1 gpugate (${deps.instanceId})`;
    this.viaMarker = `gpugate (${deps.instanceId})`;
  }

  readonly onEject = (e: EndpointState, forMs: number): void => {
    this.deps.metrics.ejections(e.backendId).inc();
    this.deps.logger.warn(
      { backend: e.backendId, endpoint: e.id, forMs },
      'endpoint ejected after consecutive failures',
    );
  };

  responseHeaders(
    upstream: Record<string, string | string[] | undefined>,
    requestId: string,
    rt: Runtime,
    cb: CompiledBackend,
    admitted: Admitted | null = null,
  ): Record<string, string | string[] | number> {
    const out = downstreamResponseHeaders(upstream, {
      requestId,
      version: this.deps.version,
      backend: rt.settings.exposeBackendHeader ? cb.id : null,
    }) as Record<string, string | string[] | number>;
    // X-RateLimit-*: added here rather than with res.setHeader, which would send writeHead down
    // its slower merging path.
    if (admitted?.headers) Object.assign(out, admitted.headers);
    return out;
  }

  /** Writes a gateway error in the JSON shape. `close`: the client may still be sending a body we will not read. */
  writeError(
    ex: { res: ServerResponse; requestId: string; error?: string | null },
    err: GatewayError,
    close = false,
  ): void {
    const res = ex.res;
    if (res.headersSent || res.destroyed) return;
    ex.error = err.code;
    const body = errorBody(err, ex.requestId);
    const headers: Record<string, string | number> = {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      ...gatewayHeaders(ex.requestId, this.deps.version),
      ...err.headers,
    };
    if (close) headers.connection = 'close';
    res.writeHead(err.status, headers);
    res.end(body);
  }

  finish(ex: Exchange): void {
    const res = ex.res;
    const aborted = !res.writableFinished;
    if (aborted) ex.abort(CLIENT_ABORT);
    if (ex.timer) clearTimeout(ex.timer);
    ex.rt.leave();
    // 499 (client closed request, as nginx logs it) when the client left before the end.
    const status = aborted ? 499 : res.statusCode;
    const seconds = (performance.now() - ex.start) / 1000;
    const children = ex.backend ? ex.backend.metrics : this.deps.metrics.requestChildren('');
    children.byClass[codeClass(status)].inc();
    children.duration.observe(seconds);
    const metering = ex.trace?.phase('metering');
    if ((this.deps.usageSink || ex.admitted?.wantsUsage) && (ex.principal || ex.publicRoute))
      this.emitUsage(ex, status, seconds);
    else ex.admitted?.end(null);
    metering?.end();
    if (ex.trace) ex.trace.end(status, this.traceAttributes(ex));
    if (this.deps.accessLog?.wants(status)) this.logAccess(ex, status, seconds);
  }

  traceAttributes(ex: Exchange): Record<string, string | number> {
    const a: Record<string, string | number> = { 'gpugate.retries': Math.max(0, ex.tried.length - 1) };
    if (ex.principal) a['gpugate.tenant'] = ex.principal.tenant.id;
    if (ex.backend) a['gpugate.backend'] = ex.backend.id;
    if (ex.endpoint) a['gpugate.endpoint'] = ex.endpoint.id;
    if (ex.model !== null) a['gen_ai.request.model'] = ex.model;
    if (ex.error !== null) a['error.type'] = ex.error;
    return a;
  }

  logAccess(ex: Exchange, status: number, seconds: number): void {
    const p = ex.principal;
    (this.deps.accessLog as AccessLog).write({
      requestId: ex.requestId,
      method: ex.method,
      path: ex.path,
      status,
      tenant: p?.tenant.id ?? null,
      keyPrefix: p?.key?.prefix ?? null,
      userId: p?.userId ?? null,
      backend: ex.backend?.id ?? null,
      endpoint: ex.endpoint?.id ?? null,
      model: ex.model,
      bytesIn: ex.bytesIn,
      bytesOut: ex.tap?.bytes ?? 0,
      durationMs: Math.round(seconds * 1000),
      ttfbMs: ex.ttfbMs,
      retries: Math.max(0, ex.tried.length - 1),
      limits: ex.limits,
      error: ex.error,
      traceId: ex.trace?.traceId ?? traceIdOf(ex.req.headers.traceparent),
    });
  }

  emitUsage(ex: Exchange, status: number, seconds: number): void {
    const b = ex.backend;
    const openai = b?.backend.protocol === 'openai';
    const reported = openai && ex.tap ? ex.tap.usage() : null;
    const bytesOut = ex.tap?.bytes ?? 0;
    // Estimates when the backend reported nothing (e.g. a stream cut before its usage chunk): ~4 bytes
    // per token, but one token per chunk of a stream (what OpenAI-style servers send).
    const inputTokens = reported ? reported.inputTokens : openai ? Math.ceil(ex.bytesIn / 4) : 0;
    const outputTokens = reported
      ? reported.outputTokens
      : openai
        ? (ex.tap?.sseChunks ?? Math.ceil(bytesOut / 4))
        : 0;
    // Charged when the backend answered 2xx, even if the response was then cut (499): what was
    // delivered is paid for. Refused and failed requests cost nothing.
    const charged = status < 400 || (status === 499 && ex.headersSent && ex.res.statusCode < 300);
    let credits = 0;
    if (b && charged) {
      const p = b.backend.pricing;
      credits =
        p.perRequest +
        (ex.route?.cost ?? 0) +
        inputTokens * p.perInputToken +
        outputTokens * p.perOutputToken;
    }
    ex.admitted?.end({ inputTokens, outputTokens, credits });
    const principal = ex.principal;
    try {
      this.deps.usageSink?.record({
        requestId: ex.requestId,
        time: ex.time,
        tenant: principal ? principal.tenant.id : PUBLIC_TENANT,
        keyId: principal?.key?.id ?? null,
        userId: principal ? principal.userId : null,
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
      this.deps.logger.error({ err, requestId: ex.requestId }, 'usage sink threw; event dropped');
    }
  }

  /**
   * A healthy endpoint below its in-flight limit, not yet tried by this request, chosen by the
   * backend's policy; 'wait' when every candidate is full and the queue has room.
   */
  pickEndpoint(cb: CompiledBackend, tried: readonly EndpointState[]): EndpointState | GatewayError | 'wait' {
    const { maxInflightPerEndpoint: maxInflight, maxQueue } = cb.backend.balancing;
    const now = Date.now();
    let ready = 0;
    let healthy = 0;
    let full = 0;
    const candidates: EndpointState[] = [];
    for (const e of cb.endpoints) {
      if (!e.ready) continue;
      ready++;
      if (!e.healthy(now)) continue;
      healthy++;
      if (tried.length > 0 && tried.includes(e)) continue;
      if (maxInflight > 0 && e.inflight >= maxInflight) {
        full++;
        continue;
      }
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
    if (healthy === 0 || (healthy * 100) / ready < this.deps.panicThresholdPercent) {
      // Panic: too few healthy endpoints. Ignore health rather than fail everything, and say so.
      this.deps.metrics.panics(cb.id).inc();
      if (!cb.state.panicking) {
        cb.state.panicking = true;
        this.deps.logger.warn(
          { backend: cb.id, ready, healthy },
          'too few healthy endpoints: panic routing to every ready endpoint',
        );
      }
      for (const e of cb.endpoints) {
        if (!e.ready || e.healthy(now) || tried.includes(e)) continue;
        if (maxInflight > 0 && e.inflight >= maxInflight) full++;
        else candidates.push(e);
      }
    } else if (cb.state.panicking) {
      cb.state.panicking = false;
      this.deps.logger.info(
        { backend: cb.id, ready, healthy },
        'healthy endpoints again: panic routing over',
      );
    }
    if (candidates.length > 0) return cb.balancer.pick(candidates, now);
    if (full === 0) {
      return gatewayError(
        502,
        'upstream_error',
        'no_endpoint_left',
        `every endpoint of backend ${cb.id} failed`,
      );
    }
    if (cb.state.waiters.length >= maxQueue) return this.queueFull(cb);
    return 'wait';
  }

  queueFull(cb: CompiledBackend): GatewayError {
    const { maxInflightPerEndpoint, queueTimeoutMs } = cb.backend.balancing;
    this.deps.metrics.queueRejections(cb.id).inc();
    return gatewayError(
      503,
      'overloaded_error',
      'endpoints_busy',
      `every endpoint of backend ${cb.id} is at its in-flight limit (${maxInflightPerEndpoint}); retry later`,
      { 'retry-after': String(Math.max(1, Math.ceil(queueTimeoutMs / 1000))) },
    );
  }

  chooseBackend(
    match: RouteMatch<CompiledBackend>,
    model: string | null,
    principal: Principal | null,
    rt: Runtime,
  ): RouteEntry<CompiledBackend> | GatewayError {
    let serving = match.usable;
    if (model !== null) {
      // Exact model names win over '*' backends; within each, the longest prefix (entries' order).
      serving = match.serving(model);
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
      for (const e of serving) {
        if (!backendAllowed(principal, e.backend.id)) continue;
        if (model === null && !servesOnlyAllowedModels(e.backend, principal)) {
          // The model was checked only if the gateway knows it: a body it did not read (no or another
          // content type, chunked, multipart, too large, another method) could name any model.
          return gatewayError(
            403,
            'permission_error',
            'model_required',
            `this tenant or key may use only some models and backend ${e.backend.id} serves others, so the gateway must know the model: ` +
              `send the body as JSON (Content-Type: application/json) with a Content-Length of at most ${rt.settings.maxJsonPeekBytes} bytes and a "model" field, ` +
              'or name the model in the x-gpugate-model header',
          );
        }
        return e;
      }
      return gatewayError(
        403,
        'permission_error',
        'backend_not_allowed',
        `tenant ${principal.tenant.id} may not use the backend serving this request`,
      );
    }
    return serving[0] as RouteEntry<CompiledBackend>;
  }

  /**
   * When the path carries a task id (a backend's asyncTasks.taskPaths), the endpoint that accepted
   * the task; a 404 when no backend on this path knows the task for this tenant; null when the path
   * is not a task path.
   */
  async findTask(
    entries: readonly RouteEntry<CompiledBackend>[],
    path: string,
    tenant: string,
  ): Promise<{ entry: RouteEntry<CompiledBackend>; endpoint: EndpointState } | GatewayError | null> {
    let isTaskPath = false;
    for (const entry of entries) {
      for (const pattern of entry.backend.taskPatterns) {
        const m = pattern.exec(path);
        if (!m) continue;
        isTaskPath = true;
        let taskId: string;
        try {
          taskId = decodeURIComponent(m[1] as string);
        } catch {
          continue;
        }
        const endpointId = await this.deps.taskStore
          .find(entry.backend.id, taskId, tenant)
          .catch(() => undefined);
        if (endpointId === undefined) {
          return gatewayError(
            503,
            'overloaded_error',
            'task_store_unavailable',
            'the task store is unavailable; retry',
            {
              'retry-after': '1',
            },
          );
        }
        const endpoint = endpointId === null ? undefined : entry.backend.byEndpointId.get(endpointId);
        if (endpoint) return { entry, endpoint };
      }
    }
    return isTaskPath ? gatewayError(404, 'not_found_error', 'unknown_task', 'no such task') : null;
  }

  async recordTask(
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
      this.deps.logger.warn({ requestId, backend: cb.id, field }, 'submit response has no task id field');
      return;
    }
    const task = { backend: cb.id, taskId: String(taskId), endpoint: e.id, tenant };
    await this.deps.taskStore.remember(task, ttlMs).catch((err: unknown) => {
      this.deps.logger.error({ requestId, backend: cb.id, err }, 'could not record async task');
    });
  }

  async listModels(ex: Exchange): Promise<void> {
    const who = await ex.rt.admission.authenticate(ex.req);
    if (!who.ok) return this.writeError(ex, who.error);
    ex.principal = who.principal;
    const data = modelsFor(ex.rt, who.principal).map((id) => ({
      id,
      object: 'model',
      created: 0,
      owned_by: 'gpugate',
    }));
    const body = JSON.stringify({ object: 'list', data });
    ex.res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      ...gatewayHeaders(ex.requestId, this.deps.version),
    });
    ex.res.end(ex.method === 'HEAD' ? undefined : body);
  }

  readonly handle = (request: FastifyRequest, reply: FastifyReply): void => {
    reply.hijack();
    this.serve(request.raw, reply.raw, request.id);
  };

  readonly serve = (req: IncomingMessage, res: ServerResponse, requestId: string): void => {
    const rt = this.deps.current();
    if (!rt) {
      return this.writeError(
        { res, requestId },
        gatewayError(503, 'overloaded_error', 'not_ready', 'the gateway has no configuration yet', {
          'retry-after': '1',
        }),
        true,
      );
    }
    const via = req.headers.via;
    if (via !== undefined && via.includes(this.viaMarker)) {
      return this.writeError(
        { res, requestId },
        gatewayError(
          508,
          'loop_detected',
          'loop_detected',
          'the request already passed through this gateway',
        ),
        true,
      );
    }
    rt.enter();
    const ex = new Exchange(this, requestId, rt, req, res);
    const tracing = this.deps.tracing;
    if (tracing) ex.trace = tracing.start(req.headers, req.method ?? 'GET', req.url ?? '/', requestId);
    (res as Answering)[EXCHANGE] = ex;
    res.on('close', onResponseClose);
    this.route(ex).catch((err: unknown) => this.internalError(ex, err));
  };

  internalError(ex: { res: ServerResponse; requestId: string; error?: string | null }, err: unknown): void {
    this.deps.logger.error({ err, requestId: ex.requestId }, 'proxy error');
    this.writeError(ex, gatewayError(500, 'internal_error', 'internal_error', 'internal error'), true);
  }

  async route(ex: Exchange): Promise<void> {
    const { req, rt, requestId } = ex;
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const method = req.method ?? 'GET';
    ex.url = url;
    ex.path = path;
    ex.method = method;

    if (path === '/v1/models' && (method === 'GET' || method === 'HEAD')) return this.listModels(ex);

    const headers = req.headers;
    const cl = headers['content-length'];
    const contentLength = cl === undefined ? -1 : Number(cl);
    const hasBody = contentLength > 0 || headers['transfer-encoding'] !== undefined;

    const match = rt.routes.resolve(path, method);
    if (match === null) {
      return this.writeError(
        ex,
        gatewayError(404, 'not_found_error', 'unknown_path', `no route for ${path}`),
        hasBody,
      );
    }
    if (match.entries.length === 0) {
      return this.writeError(
        ex,
        gatewayError(
          405,
          'invalid_request_error',
          'method_not_allowed',
          `${method} is not allowed on ${path}`,
        ),
        hasBody,
      );
    }
    // The longest matching prefix decides whether the request is public; a public request may only
    // reach public routes (match.usable).
    if (match.isPublic) {
      ex.publicRoute = true;
    } else {
      const identify = ex.trace?.phase('identify');
      // API keys authenticate synchronously: no await (and no microtask) unless a JWT needs its key set.
      const pending = rt.admission.authenticate(req);
      const who = pending instanceof Promise ? await pending : pending;
      identify?.end();
      if (!who.ok) {
        ex.limits = who.error.code;
        return this.writeError(ex, who.error, hasBody);
      }
      ex.principal = who.principal;
    }
    const routing = ex.trace?.phase('routing');

    const modelHeader = headers['x-gpugate-model'];
    let model = typeof modelHeader === 'string' && modelHeader !== '' ? modelHeader : null;
    let buffered: Buffer | null = null;
    // The body's one JSON parse: its model, the admission's max_tokens and the stream-usage rewrite.
    let json: Readonly<Record<string, unknown>> | null = null;
    if (
      contentLength > 0 &&
      contentLength <= rt.settings.maxJsonPeekBytes &&
      isJson(headers['content-type'])
    ) {
      const read = await readDeclaredBody(req, contentLength, this.deps.bodyReadTimeoutMs);
      if (read === null) return; // the client went away mid-body
      if (read === 'timeout') {
        return this.writeError(
          ex,
          gatewayError(
            408,
            'invalid_request_error',
            'request_timeout',
            `the request body (${contentLength} bytes declared) did not arrive within ${this.deps.bodyReadTimeoutMs} ms`,
          ),
          true,
        );
      }
      buffered = read;
      json = parseJsonRequest(buffered);
      model = modelOf(json) ?? model;
    }
    ex.model = model;
    ex.bytesIn = contentLength > 0 ? contentLength : 0;
    const unread = hasBody && buffered === null;

    let entry: RouteEntry<CompiledBackend> | GatewayError;
    const task = rt.hasAsyncTasks
      ? await this.findTask(match.usable, path, ex.principal?.tenant.id ?? '')
      : null;
    if (task) {
      if ('status' in task) return this.writeError(ex, task, unread);
      entry = task.entry;
      ex.pinned = task.endpoint;
    } else {
      entry = this.chooseBackend(match, model, ex.principal, rt);
    }
    routing?.end();
    if ('status' in entry) return this.writeError(ex, entry, unread);
    const cb = entry.backend;
    ex.backend = cb;
    ex.route = entry.route;
    const backend = cb.backend;
    if (contentLength > backend.maxRequestBytes) {
      return this.writeError(
        ex,
        gatewayError(
          413,
          'request_too_large',
          'request_too_large',
          `request body of ${contentLength} bytes exceeds the ${backend.maxRequestBytes} bytes backend ${cb.id} accepts`,
        ),
        true,
      );
    }
    const admission = ex.trace?.phase('admission');
    const admitting = rt.admission.admit({
      principal: ex.principal,
      req,
      res: ex.res,
      backend,
      route: entry.route,
      request: json,
      bodyBytes: ex.bytesIn,
    });
    // Only a quota lease makes admission asynchronous.
    const admitted = admitting instanceof Promise ? await admitting : admitting;
    admission?.end();
    if (admitted === null) return; // the client went away
    if ('status' in admitted) {
      ex.limits = admitted.code;
      return this.writeError(ex, admitted, unread);
    }
    ex.admitted = admitted;
    ex.limits = 'admitted';
    if (buffered) ex.body = buffered;
    else if (hasBody) {
      if (contentLength < 0) {
        const limited = new BodyLimit(backend.maxRequestBytes);
        req.pipe(limited);
        ex.body = limited;
      } else {
        ex.body = req;
      }
    }
    if (json && buffered && backend.protocol === 'openai') {
      // Exact token counts for streams: ask for the final usage chunk (kept from the client).
      const rewritten = askForStreamUsage(json, buffered);
      if (rewritten) {
        ex.body = rewritten;
        ex.stripUsage = true;
      }
    }
    ex.replayable = ex.body === null || buffered !== null;
    ex.attemptsLeft = 1 + (ex.replayable && ex.pinned === null ? backend.retries.attempts : 0);

    const totalMs = backend.timeouts.totalMs;
    if (totalMs > 0) ex.timer = setTimeout(() => this.onTotalTimeout(ex), totalMs);
    const principal = ex.principal;
    ex.upstreamHeaders = upstreamRequestHeaders(headers, {
      requestId,
      clientIp: req.socket.remoteAddress ?? '',
      proto: 'http',
      via: this.viaEntry,
      identity: {
        tenant: principal?.tenant.id ?? null,
        userId: principal?.userId ?? null,
        userName: principal?.userName ?? null,
      },
      upstreamAuth: backend.upstreamAuth,
    });
    if (ex.stripUsage) ex.upstreamHeaders['content-length'] = String((ex.body as Buffer).length);
    ex.next();
  }

  onTotalTimeout(ex: Exchange): void {
    ex.timer = null;
    ex.abort(TOTAL_TIMEOUT);
    if (ex.headersSent) ex.res.destroy();
    else if (!ex.current) ex.failBeforeHeaders();
  }
}

/**
 * The proxy's Fastify scope. The public port's front door (dataplane/http/front-door.ts) calls
 * `proxy.serve` directly for nearly every request; this scope serves the ones it hands to Fastify.
 */
export function proxyPlugin(proxy: Proxy) {
  return async function proxyScope(app: FastifyInstance): Promise<void> {
    // The proxy takes the request over in onRequest (after the root scope's CORS hook), so Fastify
    // never parses a body here and its validation and pre-handler steps are skipped: every body stays
    // a raw stream and the proxy decides what to buffer. The routes only make the paths match.
    app.addHook('onRequest', (request, reply, done) => {
      proxy.handle(request, reply);
      done();
    });
    app.route({ method: PROXY_METHODS, url: '/*', handler: proxy.handle });
    app.route({ method: PROXY_METHODS, url: '/', handler: proxy.handle });
  };
}
