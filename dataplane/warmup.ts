// The warm-up: before a new replica says it is ready, a private data plane in the same process serves
// a few thousand requests, so that the first real request runs through code V8 has already compiled
// and optimized (a fresh process serves its first ~1,000 requests 0.5–2 ms slower to the first
// token: docs/benchmarks.md, "Where the first token's time goes").
//
// What runs is real traffic's code, not a copy: the private plane is built by createDataPlane itself
// (so the front door, the proxy's closures and every class come from the same function literals and
// share V8's feedback and optimized code with the serving plane), applies a snapshot that went through
// JSON like a pushed one, and is driven over loopback sockets: API-key identity, admission with rate
// limits, the model from a JSON body, two balancing policies, undici dispatch to a stub upstream, the
// JSON usage read, SSE with the stream-usage rewrite and the per-chunk filter, the access log.
//
// What it must not touch is the serving plane's state: the private plane has its own registry (never
// exposed), no usage sink (nothing is metered), no quota or task database, a logger that writes
// nowhere, and no tracing; its upstream is a stub on an ephemeral 127.0.0.1 port. The client and the
// stub speak HTTP/1.1 over raw sockets, so that no HTTP client code (undici's request API, Node's
// ClientRequest) runs in the process that real traffic never runs there: its type feedback would mix
// into the code the gateway shares with it.
//
// Bounded by a request count and a time budget; it never throws and never blocks serving: a failure is
// reported once in its outcome (server.ts logs it) and the replica becomes ready without it.
import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { pino, type Level } from 'pino';
import { Registry } from 'prom-client';
import { generateApiKey, hashApiKey, keyPrefix } from './auth/keys.ts';
import { canonicalJson, contentRevision } from './config/revision.ts';
import type { Backend } from './config/snapshot.ts';
import type { AccessLogOptions } from './observability/access-log.ts';
import { envName, flagOrEnv } from './observability/options.ts';
import type { DataPlane, DataPlaneOptions } from './server.ts';

export interface WarmupOptions {
  /** Requests the private plane serves; 0: no warm-up. */
  requests: number;
  /** The warm-up stops here whatever it has done, and the replica may become ready. */
  budgetMs: number;
}

export const DEFAULT_WARMUP: WarmupOptions = { requests: 2_000, budgetMs: 2_000 };
/** Upper bounds: a replica must not stay unready for minutes because of a typo. */
export const MAX_WARMUP_REQUESTS = 100_000;
export const MAX_WARMUP_BUDGET_MS = 60_000;
/** Client connections used at once (a few, as a replica behind a load balancer sees). */
const CONNECTIONS = 4;
/** Content chunks per warm-up stream (then the usage chunk and [DONE]). */
const STREAM_CHUNKS = 6;
const MAX_MESSAGE_BYTES = 1 << 20;

export type WarmupOutcome =
  | { state: 'off' }
  | { state: 'done'; requests: number; durationMs: number }
  /** The budget ran out first: `requests` were served. */
  | { state: 'budget'; requests: number; durationMs: number }
  /** The serving plane began to close first. */
  | { state: 'aborted'; requests: number; durationMs: number }
  | { state: 'failed'; requests: number; durationMs: number; error: string };

export class WarmupConfigError extends Error {}

export const WARMUP_FLAGS = {
  'warmup-requests': { type: 'string' },
  'warmup-budget-ms': { type: 'string' },
} as const;

type WarmupValues = { [F in keyof typeof WARMUP_FLAGS]?: string };

function setting(
  flag: keyof typeof WARMUP_FLAGS,
  values: WarmupValues,
  env: NodeJS.ProcessEnv,
  min: number,
  max: number,
  fallback: number,
): number {
  const got = flagOrEnv(flag, values[flag], env[envName(flag)]);
  if (got === null) return fallback;
  const [name, raw] = got;
  const n = raw.trim() === '' ? NaN : Number(raw);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new WarmupConfigError(
      `${name} must be an integer from ${min} to ${max}${min === 0 ? ' (0 turns the warm-up off)' : ''}, got ${JSON.stringify(raw)}`,
    );
  return n;
}

/** The warm-up's process settings (dataplane/main.ts): flags override environment variables. */
export function warmupOptions(
  values: WarmupValues,
  env: NodeJS.ProcessEnv,
  defaults: WarmupOptions = DEFAULT_WARMUP,
): WarmupOptions {
  return {
    requests: setting('warmup-requests', values, env, 0, MAX_WARMUP_REQUESTS, defaults.requests),
    budgetMs: setting('warmup-budget-ms', values, env, 1, MAX_WARMUP_BUDGET_MS, defaults.budgetMs),
  };
}

/**
 * Reads HTTP/1.1 messages off a byte stream: the head, then a body framed by Content-Length or by
 * chunked encoding (no trailers), or none. Only what the warm-up's own client and stub exchange.
 */
class MessageReader {
  #buf: Buffer = Buffer.alloc(0);
  readonly #onMessage: (head: string, body: Buffer) => void;

  constructor(onMessage: (head: string, body: Buffer) => void) {
    this.#onMessage = onMessage;
  }

  push(chunk: Buffer): void {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    if (this.#buf.length > MAX_MESSAGE_BYTES) throw new Error('warm-up message over 1 MiB');
    for (;;) {
      const taken = this.#next();
      if (taken === 0) return;
      this.#buf = this.#buf.subarray(taken);
    }
  }

  /** Parses one whole message at the start of the buffer; the bytes it took, or 0 when it is not all there. */
  #next(): number {
    const buf = this.#buf;
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) return 0;
    const head = buf.toString('latin1', 0, end);
    const start = end + 4;
    const length = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (length) {
      const stop = start + Number(length[1]);
      if (buf.length < stop) return 0;
      this.#onMessage(head, buf.subarray(start, stop));
      return stop;
    }
    if (!/\r\ntransfer-encoding: *chunked/i.test(head)) {
      this.#onMessage(head, Buffer.alloc(0));
      return start;
    }
    const parts: Buffer[] = [];
    let at = start;
    for (;;) {
      const eol = buf.indexOf('\r\n', at);
      if (eol < 0) return 0;
      const size = parseInt(buf.toString('latin1', at, eol), 16);
      if (!Number.isInteger(size)) throw new Error('warm-up message with a bad chunk size');
      const data = eol + 2;
      if (buf.length < data + size + 2) return 0;
      if (size === 0) {
        this.#onMessage(head, Buffer.concat(parts));
        return data + 2;
      }
      parts.push(buf.subarray(data, data + size));
      at = data + size + 2;
    }
  }
}

function sseChunk(text: string): Buffer {
  return Buffer.from(`${Buffer.byteLength(text).toString(16)}\r\n${text}\r\n`);
}

/**
 * How a model server answers, in two dialects, taken in turn: vLLM's (uvicorn's headers, its usage
 * object) and a Node.js server's (date, keep-alive headers). Code that reads response heads and usage
 * objects then has seen more than one shape before real traffic brings its own, as it will.
 */
interface StubDialect {
  sseHead: Buffer;
  token: Buffer;
  usage: Buffer;
  json: Buffer;
}

const SSE_END = Buffer.concat([sseChunk('data: [DONE]\n\n'), Buffer.from('0\r\n\r\n')]);

function dialect(sseHeaders: string, jsonHeaders: string, usage: string): StubDialect {
  const chunk = (fields: string) =>
    sseChunk(
      `data: {"id":"chatcmpl-warmup","object":"chat.completion.chunk","created":1,"model":"warmup",${fields}}\n\n`,
    );
  const json = `{"id":"chatcmpl-warmup","object":"chat.completion","created":1,"model":"warmup","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":${usage}}`;
  return {
    sseHead: Buffer.from(`HTTP/1.1 200 OK\r\n${sseHeaders}transfer-encoding: chunked\r\n\r\n`),
    token: chunk('"choices":[{"index":0,"delta":{"content":"tok"},"logprobs":null,"finish_reason":null}]'),
    usage: chunk(`"choices":[],"usage":${usage}`),
    json: Buffer.from(
      `HTTP/1.1 200 OK\r\n${jsonHeaders}content-length: ${Buffer.byteLength(json)}\r\n\r\n${json}`,
    ),
  };
}

const DIALECTS: readonly StubDialect[] = [
  dialect(
    'date: Sat, 21 Nov 2026 12:00:00 GMT\r\nserver: uvicorn\r\ncontent-type: text/event-stream; charset=utf-8\r\n',
    'date: Sat, 21 Nov 2026 12:00:00 GMT\r\nserver: uvicorn\r\ncontent-type: application/json\r\n',
    `{"prompt_tokens":12,"total_tokens":${12 + STREAM_CHUNKS},"completion_tokens":${STREAM_CHUNKS},"prompt_tokens_details":null}`,
  ),
  dialect(
    'content-type: text/event-stream\r\ncache-control: no-cache\r\ndate: Sat, 21 Nov 2026 12:00:00 GMT\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n',
    'content-type: application/json\r\ndate: Sat, 21 Nov 2026 12:00:00 GMT\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n',
    `{"prompt_tokens":12,"completion_tokens":${STREAM_CHUNKS}}`,
  ),
];

/**
 * The stub model server: answers every request on loopback like an OpenAI-style server, a stream
 * (head first, then one write per event, as vLLM sends them; the usage chunk when asked for) when the
 * body says `"stream":true`, else a JSON completion with usage.
 */
function serveStub(socket: Socket): void {
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  let answered = 0;
  const reader = new MessageReader((_head, body) => {
    const d = DIALECTS[answered++ % DIALECTS.length] as StubDialect;
    const text = body.toString('latin1');
    if (!text.includes('"stream":true')) {
      socket.write(d.json);
      return;
    }
    const usage = text.includes('"include_usage":true');
    socket.write(d.sseHead);
    let i = 0;
    const next = (): void => {
      if (socket.destroyed) return;
      if (i < STREAM_CHUNKS) {
        i++;
        socket.write(d.token);
        setImmediate(next);
        return;
      }
      if (usage) socket.write(d.usage);
      socket.write(SSE_END);
    };
    setImmediate(next);
  });
  socket.on('data', (chunk: Buffer) => {
    try {
      reader.push(chunk);
    } catch {
      socket.destroy();
    }
  });
}

async function listenStub(): Promise<{ server: Server; url: string }> {
  const server = createServer(serveStub);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/** One request the client sends, and what the answer must show for the path it exercised to count. */
interface WarmupRequest {
  bytes: Buffer;
  /** For streams: whether the client must see the usage chunk (it asked) or must not (the filter removed it). */
  usage: boolean | null;
}

/**
 * Request heads as common clients send them (curl, the OpenAI Python SDK, Node's fetch, a bare one):
 * Node builds each request's header object in arrival order, so one client's shape alone would leave
 * code optimized for that shape only, to be thrown away at the first real request of another.
 */
const CLIENT_HEADERS: readonly ((key: string) => string)[] = [
  (key) => `host: gateway\r\nuser-agent: curl/8.5.0\r\naccept: */*\r\nauthorization: Bearer ${key}\r\n`,
  (key) =>
    `host: gateway\r\naccept-encoding: gzip, deflate\r\nconnection: keep-alive\r\naccept: application/json\r\n` +
    `user-agent: OpenAI/Python 1.54.0\r\nx-stainless-lang: python\r\nx-stainless-package-version: 1.54.0\r\n` +
    `authorization: Bearer ${key}\r\nx-stainless-retry-count: 0\r\n`,
  (key) =>
    `host: gateway\r\nconnection: keep-alive\r\nauthorization: Bearer ${key}\r\naccept: */*\r\n` +
    `accept-language: *\r\nsec-fetch-mode: cors\r\nuser-agent: node\r\naccept-encoding: gzip, deflate\r\n`,
  (key) => `host: gateway\r\nauthorization: Bearer ${key}\r\nx-request-id: warmup-request\r\n`,
];

function post(path: string, head: string, body: unknown): Buffer {
  const text = JSON.stringify(body);
  return Buffer.from(
    `POST ${path} HTTP/1.1\r\n${head}content-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\n\r\n${text}`,
  );
}

/**
 * The mix: mostly streams (what a GPU gateway serves), JSON completions and the model list, each from
 * every client shape.
 */
function requestMix(key: string): WarmupRequest[] {
  const messages = [{ role: 'user', content: 'warm-up' }];
  const mix: WarmupRequest[] = [];
  for (const [i, client] of CLIENT_HEADERS.entries()) {
    const head = client(key);
    // Bodies differ by client too (the parsed body's shape is read for the model and max_tokens).
    const chat = (model: string, extra: Record<string, unknown>) =>
      post(
        '/v1/chat/completions',
        head,
        i % 2 === 0
          ? { model, messages, max_tokens: 16, ...extra }
          : { messages, model, ...extra, temperature: 0.7, max_tokens: 16 },
      );
    mix.push(
      { bytes: chat('warmup-a', { stream: true }), usage: false },
      { bytes: chat('warmup-a', {}), usage: null },
      { bytes: chat('warmup-b', { stream: true, stream_options: { include_usage: true } }), usage: true },
      { bytes: chat('warmup-b', { stream: true }), usage: false },
      {
        bytes: post('/v1/completions', head, { model: 'warmup-b', prompt: 'warm-up', max_tokens: 16 }),
        usage: null,
      },
      { bytes: chat('warmup-a', { stream: true, stream_options: { include_usage: true } }), usage: true },
      { bytes: Buffer.from(`GET /v1/models HTTP/1.1\r\n${head}\r\n`), usage: null },
      { bytes: chat('warmup-a', { stream: true }), usage: false },
    );
  }
  return mix;
}

function warmupBackend(
  id: string,
  models: string[],
  urls: string[],
  policy: Backend['balancing']['policy'],
): Backend {
  return {
    id,
    protocol: 'openai',
    models,
    routes: [
      { pathPrefix: '/v1', methods: [], public: false },
      { pathPrefix: '/v1/chat/completions', methods: ['POST'], public: false, cost: 0.5 },
    ],
    endpoints: urls.map((url, i) => ({ id: `ep${i}`, url, weight: 1 + i, source: 'static', ready: true })),
    balancing: {
      policy,
      maxInflightPerEndpoint: 64,
      maxQueue: 256,
      queueTimeoutMs: 5_000,
      metricsPath: '/metrics',
    },
    // One backend checked, one not: both shapes are common in snapshots. Checks go to the stub too.
    healthCheck:
      policy === 'LeastRequest'
        ? { path: '/health', intervalMs: 1_000, timeoutMs: 500, healthyThreshold: 1, unhealthyThreshold: 3 }
        : null,
    retries: { attempts: 1, retryOnStatus: [503] },
    timeouts: { connectMs: 2_000, firstByteMs: 10_000, totalMs: 30_000 },
    maxRequestBytes: 100 * 1024 * 1024,
    pricing: { perRequest: 0.1, perInputToken: 0.001, perOutputToken: 0.002 },
    asyncTasks: null,
    upstreamAuth: { header: 'authorization', value: 'Bearer warmup-upstream' },
    registration: null,
  };
}

/**
 * The private plane's snapshot, as canonical JSON parsed back: the objects have the shapes of a pushed
 * snapshot's (JSON.parse of the operator's sorted JSON), not of object literals, so the code that reads
 * them keeps the type feedback real snapshots give it.
 */
function warmupSnapshot(urls: string[], key: string): unknown {
  const tenant = 'gpugate-warmup/tenant';
  const body = {
    schemaVersion: 1,
    settings: { replicas: 1, exposeBackendHeader: true, maxJsonPeekBytes: 1024 * 1024 },
    backends: [
      warmupBackend('gpugate-warmup/a', ['warmup-a'], urls, 'LeastRequest'),
      warmupBackend('gpugate-warmup/b', ['*'], urls, 'RoundRobin'),
    ],
    tenants: [
      {
        id: tenant,
        suspended: false,
        allowedModels: [],
        allowedBackends: [],
        limits: {
          requestsPerMinute: 1_000_000_000,
          tokensPerMinute: 1_000_000_000,
          concurrentRequests: 1_000,
        },
        quota: null,
        failOpen: true,
        jwt: null,
      },
    ],
    keys: [
      {
        id: 'gpugate-warmup/key',
        tenant,
        sha256: hashApiKey(key),
        prefix: keyPrefix(key),
        disabled: false,
        expiresAt: null,
        limits: {},
        quota: null,
        allowedModels: [],
        allowedCIDRs: [],
      },
    ],
  };
  return JSON.parse(
    canonicalJson({ ...body, revision: contentRevision(body), generatedAt: new Date().toISOString() }),
  ) as unknown;
}

/** Sends requests one after another on one keep-alive connection, taking the next index from `take`. */
async function clientConnection(
  port: number,
  mix: WarmupRequest[],
  take: () => number | null,
  sockets: Set<Socket>,
  served: () => void,
): Promise<void> {
  const socket = connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  sockets.add(socket);
  let waiting: { resolve: (r: { head: string; body: Buffer }) => void; reject: (e: Error) => void } | null =
    null;
  const fail = (err: Error) => {
    const w = waiting;
    waiting = null;
    w?.reject(err);
  };
  const reader = new MessageReader((head, body) => {
    const w = waiting;
    waiting = null;
    w?.resolve({ head, body });
  });
  socket.on('data', (chunk: Buffer) => {
    try {
      reader.push(chunk);
    } catch (err) {
      fail(err as Error);
      socket.destroy();
    }
  });
  socket.on('error', (err) => fail(err));
  socket.on('close', () => fail(new Error('the warm-up connection closed')));
  try {
    // 'close' too: the budget may destroy the socket before it connects, and then no 'connect' comes.
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('close', () => reject(new Error('the warm-up connection closed')));
    });
    for (let i = take(); i !== null; i = take()) {
      const req = mix[i % mix.length] as WarmupRequest;
      const answer = new Promise<{ head: string; body: Buffer }>((resolve, reject) => {
        waiting = { resolve, reject };
      });
      socket.write(req.bytes);
      const { head, body } = await answer;
      const status = head.slice(9, 12);
      if (status !== '200')
        throw new Error(
          `the private plane answered a warm-up request ${status}: ${body.toString('utf8', 0, 300)}`,
        );
      if (req.usage !== null && body.includes('"usage":{') !== req.usage)
        throw new Error(
          `a warm-up stream ${req.usage ? 'lacked' : 'kept'} the usage chunk: the stream-usage path did not run as expected`,
        );
      served();
    }
  } finally {
    sockets.delete(socket);
    socket.destroy();
  }
}

export interface WarmupDeps {
  /** createDataPlane: the private plane is built by the same code as the serving one. */
  build(opts: DataPlaneOptions): Promise<DataPlane>;
  /** The serving plane's access-log settings and log level, so the access log's path runs as it does there. */
  accessLog?: Partial<AccessLogOptions>;
  logLevel: Level | 'silent';
  /** Aborted when the serving plane closes. */
  signal: AbortSignal;
  /** Called once, as soon as the outcome is known (before the private plane is closed). */
  onOutcome?(outcome: WarmupOutcome): void;
}

/**
 * Runs the warm-up. Never rejects: resolves with the outcome (done, budget spent, aborted, failed)
 * once the private plane and the stubs are closed; onOutcome hears it as soon as it is known.
 */
export async function warmUp(opts: WarmupOptions, deps: WarmupDeps): Promise<WarmupOutcome> {
  if (opts.requests <= 0) {
    deps.onOutcome?.({ state: 'off' });
    return { state: 'off' };
  }
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  let served = 0;
  let next = 0;
  let stopped = false;
  const sockets = new Set<Socket>();
  const stop = () => {
    stopped = true;
    for (const s of sockets) s.destroy();
  };
  let budgetTimer: NodeJS.Timeout | undefined;
  const outOfTime = new Promise<'budget'>((resolve) => {
    budgetTimer = setTimeout(() => resolve('budget'), opts.budgetMs);
  });
  const aborted = new Promise<'aborted'>((resolve) => {
    if (deps.signal.aborted) resolve('aborted');
    deps.signal.addEventListener('abort', () => resolve('aborted'), { once: true });
  });
  const stubs: Server[] = [];
  let plane: DataPlane | null = null;
  const work = async (): Promise<'done'> => {
    // Two stub endpoints, so that both balancers choose between endpoints.
    for (let i = 0; i < 2 && !stopped; i++) stubs.push((await listenStub()).server);
    const urls = stubs.map((s) => `http://127.0.0.1:${(s.address() as AddressInfo).port}`);
    if (stopped) return 'done';
    plane = await deps.build({
      // Writes nowhere: the private plane's log lines (its access log included) are built and dropped.
      logger: pino({ level: deps.logLevel }, { write: () => undefined }),
      registry: new Registry(),
      listen: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0, token: null },
      ...(deps.accessLog ? { accessLog: deps.accessLog } : {}),
      tracing: null,
    });
    if (stopped) return 'done';
    const key = generateApiKey();
    const applied = plane.applySnapshot(warmupSnapshot(urls, key));
    if (!applied.accepted)
      throw new Error(`the warm-up snapshot was refused: ${JSON.stringify(applied.problems)}`);
    const port = Number(new URL(plane.url).port);
    const mix = requestMix(key);
    const take = () => (stopped || next >= opts.requests ? null : next++);
    await Promise.all(
      Array.from({ length: Math.min(CONNECTIONS, opts.requests) }, () =>
        clientConnection(port, mix, take, sockets, () => served++),
      ),
    );
    return 'done';
  };
  const working = work();
  let outcome: WarmupOutcome;
  try {
    // work() ends 'done' first only when every request was taken and answered (it returns early
    // only once stopped, which is after this race).
    const state = await Promise.race([working, outOfTime, aborted]);
    outcome = { state, requests: served, durationMs: elapsed() };
  } catch (err) {
    outcome = {
      state: 'failed',
      requests: served,
      durationMs: elapsed(),
      error: err instanceof Error ? err.message : String(err),
    };
  } finally {
    clearTimeout(budgetTimer);
    stop();
  }
  deps.onOutcome?.(outcome);
  // Cleanup comes after the outcome (readiness does not wait for it): once stopped, the client's
  // sockets are gone and work() ends at its next step; then the private plane closes without a drain.
  await working.catch(() => undefined);
  await Promise.allSettled([
    (plane as DataPlane | null)?.close({ drainMs: 0 }),
    ...stubs.map(
      (s) =>
        new Promise<void>((resolve) => {
          s.close(() => resolve());
        }),
    ),
  ]);
  return outcome;
}
