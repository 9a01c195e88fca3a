// Test harness for the data plane: snapshot builders and small real HTTP upstreams on 127.0.0.1.
// (The GPU simulator in test/fixtures/gpusim covers vLLM behaviour; these upstreams exist to record
// exactly what reached them and to misbehave on purpose.)
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { generateApiKey, hashApiKey, keyPrefix } from '../../dataplane/auth/keys.ts';
import type { Readiness } from '../../dataplane/admin/readiness.ts';
import { contentRevision } from '../../dataplane/config/revision.ts';
import type { ApiKey, Backend, Settings, Snapshot, Tenant } from '../../dataplane/config/snapshot.ts';
import type { UsageEvent, UsageSink } from '../../dataplane/metering/usage.ts';
import { createDataPlane, type DataPlane, type DataPlaneOptions } from '../../dataplane/server.ts';

export const quietLogger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

export function backend(id: string, urls: string[], overrides: Partial<Backend> = {}): Backend {
  return {
    id,
    protocol: 'openai',
    models: ['*'],
    routes: [{ pathPrefix: '/v1', methods: [], public: false }],
    endpoints: urls.map((url, i) => ({ id: `ep${i}`, url, weight: 1, source: 'static', ready: true })),
    balancing: {
      policy: 'RoundRobin',
      maxInflightPerEndpoint: 0,
      maxQueue: 0,
      queueTimeoutMs: 1000,
      metricsPath: '/metrics',
    },
    healthCheck: null,
    retries: { attempts: 2, retryOnStatus: [] },
    timeouts: { connectMs: 2000, firstByteMs: 30_000, totalMs: 60_000 },
    maxRequestBytes: 200 * 1024 * 1024,
    pricing: { perRequest: 1, perInputToken: 0, perOutputToken: 0 },
    asyncTasks: null,
    upstreamAuth: null,
    registration: null,
    ...overrides,
  };
}

/** `backend()` balanced by QueueAware: each pick uses the load the endpoints' model servers report on /metrics. */
export function queueAwareBackend(id: string, urls: string[], overrides: Partial<Backend> = {}): Backend {
  const b = backend(id, urls, overrides);
  return { ...b, balancing: { ...b.balancing, policy: 'QueueAware' } };
}

export function tenant(id: string, overrides: Partial<Tenant> = {}): Tenant {
  return {
    id,
    suspended: false,
    allowedModels: [],
    allowedBackends: [],
    limits: {},
    quota: null,
    failOpen: true,
    jwt: null,
    ...overrides,
  };
}

export function apiKey(tenantId: string, overrides: Partial<ApiKey> = {}): { secret: string; key: ApiKey } {
  const secret = generateApiKey();
  return {
    secret,
    key: {
      id: `${tenantId}-key-${keyPrefix(secret)}`,
      tenant: tenantId,
      sha256: hashApiKey(secret),
      prefix: keyPrefix(secret),
      disabled: false,
      expiresAt: null,
      limits: {},
      quota: null,
      allowedModels: [],
      allowedCIDRs: [],
      ...overrides,
    },
  };
}

let clock = Date.parse('2026-01-01T00:00:00Z');

export function snapshot(parts: {
  backends: Backend[];
  tenants?: Tenant[];
  keys?: ApiKey[];
  settings?: Partial<Settings>;
  generatedAt?: string;
}): Snapshot {
  clock += 1000;
  const body = {
    schemaVersion: 1,
    settings: { replicas: 1, exposeBackendHeader: true, maxJsonPeekBytes: 1 << 20, ...parts.settings },
    backends: parts.backends,
    tenants: parts.tenants ?? [],
    keys: parts.keys ?? [],
  };
  return {
    ...body,
    revision: contentRevision(body),
    generatedAt: parts.generatedAt ?? new Date(clock).toISOString(),
  };
}

export interface RecordedRequest {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  bodyBytes: number;
  body: string;
}

export type UpstreamHandler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;

export interface Upstream {
  name: string;
  url: string;
  port: number;
  requests: RecordedRequest[];
  /** Requests whose client connection closed before the response ended. */
  aborted: number;
  server: Server;
  close(): Promise<void>;
}

export interface UpstreamOptions {
  port?: number;
  keepBody?: boolean;
  streamBody?: boolean;
}

/** A real HTTP upstream that records every request; by default answers a small JSON completion. */
export async function startUpstream(
  name: string,
  handler?: UpstreamHandler,
  opts: UpstreamOptions = {},
): Promise<Upstream> {
  const up: Upstream = {
    name,
    url: '',
    port: 0,
    requests: [],
    aborted: 0,
    server: null as unknown as Server,
    close: async () => {
      up.server.closeAllConnections();
      await new Promise<void>((r) => up.server.close(() => r()));
    },
  };
  up.server = createServer((req, res) => {
    res.once('close', () => {
      if (!res.writableFinished) up.aborted++;
    });
    const chunks: Buffer[] = [];
    let bytes = 0;
    const recorded: RecordedRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      bodyBytes: 0,
      body: '',
    };
    up.requests.push(recorded);
    req.on('data', (c: Buffer) => {
      bytes += c.length;
      recorded.bodyBytes = bytes;
      if (opts.keepBody !== false && bytes <= 1 << 20) chunks.push(c);
    });
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      recorded.body = body.toString('utf8');
      if (handler) return handler(req, res, body);
      const payload = JSON.stringify({
        id: 'cmpl-1',
        object: 'chat.completion',
        upstream: name,
        choices: [{ index: 0, message: { role: 'assistant', content: 'hi' } }],
        usage: { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10 },
        receivedBytes: bytes,
      });
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(payload),
      });
      res.end(payload);
    });
  });
  up.server.keepAliveTimeout = 30_000;
  await new Promise<void>((resolve) => up.server.listen(opts.port ?? 0, '127.0.0.1', () => resolve()));
  up.port = (up.server.address() as AddressInfo).port;
  up.url = `http://127.0.0.1:${up.port}`;
  return up;
}

export class MemorySink implements UsageSink {
  events: UsageEvent[] = [];
  record(event: UsageEvent): void {
    this.events.push(event);
  }
}

export type PlaneOptions = Partial<DataPlaneOptions>;

export async function startPlane(extra: PlaneOptions = {}): Promise<DataPlane> {
  return createDataPlane({
    logger: quietLogger,
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0, token: 'push-token-for-tests' },
    ...extra,
  });
}

/** A snapshot of one backend and the tenant of one key, with that key. */
export function snapshotFor(b: Backend, key: ApiKey, settings?: Partial<Settings>): Snapshot {
  return snapshot({ backends: [b], tenants: [tenant(key.tenant)], keys: [key], settings });
}

/**
 * What a test file starts and closes again: `close` runs the closers last first and empties the list; a
 * file hands it to afterEach (and to afterAll for what its beforeAll started). Planes and upstreams
 * started through it are closed that way.
 */
export interface Cleanups {
  push(...closers: (() => Promise<void>)[]): void;
  close(): Promise<void>;
  /** startPlane, closed with this drain. */
  plane(opts?: PlaneOptions, drainMs?: number): Promise<DataPlane>;
  upstream(name: string, handler?: UpstreamHandler, opts?: UpstreamOptions): Promise<Upstream>;
}

export function cleanupList(): Cleanups {
  const closers: (() => Promise<void>)[] = [];
  return {
    push: (...c) => void closers.push(...c),
    close: async () => {
      for (const c of closers.splice(0).reverse()) await c();
    },
    async plane(opts = {}, drainMs = 500) {
      const plane = await startPlane(opts);
      closers.push(() => plane.close({ drainMs }));
      return plane;
    },
    async upstream(name, handler, opts) {
      const up = await startUpstream(name, handler, opts);
      closers.push(() => up.close());
      return up;
    },
  };
}

/**
 * A sample's value on an admin port's /metrics, given as exported (`name{labels}`); 0 while it is not
 * exported (a labelled counter appears with its first increment).
 */
export async function metric(plane: { adminUrl: string }, sample: string): Promise<number> {
  const res = await fetch(plane.adminUrl + '/metrics');
  const found = (await res.text()).split('\n').find((l) => l.startsWith(sample + ' '));
  return found ? Number(found.slice(sample.length + 1)) : 0;
}

/** A data plane's /readyz: its status code and the checks with their reasons. */
export async function readyz(plane: { adminUrl: string }): Promise<{ status: number; body: Readiness }> {
  const res = await fetch(`${plane.adminUrl}/readyz`);
  return { status: res.status, body: (await res.json()) as Readiness };
}

export function chat(model: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ model, messages: [{ role: 'user', content: 'hello' }], ...extra });
}

/**
 * Waits until `check` (which may query, e.g. Postgres) is true, polling every 10 ms, at most `maxMs`; then
 * fails the test, naming `what` it waited for.
 */
export async function until(
  check: () => boolean | Promise<boolean>,
  maxMs = 10_000,
  what = 'condition',
): Promise<void> {
  const end = Date.now() + maxMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`${what} not met after ${maxMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
