// Each balancing policy's distribution over real upstream sockets, and the in-flight limit queue.
import type { ServerResponse } from 'node:http';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { BackendView } from '../../dataplane/admin/views.ts';
import type { Backend } from '../../dataplane/config/snapshot.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import {
  apiKey,
  backend,
  chat,
  cleanupList,
  queueAwareBackend,
  snapshotFor,
  until,
  type PlaneOptions,
  type Upstream,
} from './harness.ts';

const acme = apiKey('acme');
const cleanups = cleanupList();
afterEach(cleanups.close);
afterAll(cleanups.close);

async function planeWith(b: Backend, opts: PlaneOptions = {}): Promise<DataPlane> {
  const plane = await cleanups.plane(opts);
  const r = plane.applySnapshot(snapshotFor(b, acme.key));
  expect(r.accepted).toBe(true);
  return plane;
}

function send(
  plane: DataPlane,
  model = 'm',
): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  return request(plane.url + '/v1/chat/completions', {
    method: 'POST',
    body: chat(model),
    headers: { 'content-type': 'application/json', authorization: `Bearer ${acme.secret}` },
  }).then(async (r) => ({ status: r.statusCode, body: await r.body.text(), headers: r.headers }));
}

interface ModelLoad {
  waiting: number;
  running: number;
  kv: number;
}

/** An upstream that answers chat requests with its name and /metrics with vLLM gauges from `load[name]`. */
function metricsUpstream(name: string, load: Record<string, ModelLoad>): Promise<Upstream> {
  return cleanups.upstream(name, (req, res) => {
    if (req.url === '/metrics') {
      const l = load[name]!;
      res.end(
        `# HELP vllm:num_requests_waiting x\nvllm:num_requests_waiting{model_name="m"} ${l.waiting}\n` +
          `vllm:num_requests_running{model_name="m"} ${l.running}\nvllm:kv_cache_usage_perc{model_name="m"} ${l.kv}\n`,
      );
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ upstream: name }));
  });
}

/**
 * Waits (bounded) until the admin view shows, for every endpoint URL given, the load its model server
 * reports: the data plane has scraped and stored it, so the next pick uses it.
 */
async function untilScraped(
  plane: DataPlane,
  expected: Record<string, ModelLoad>,
  maxMs = 15_000,
): Promise<void> {
  await until(
    async () => {
      const res = await request(plane.adminUrl + '/admin/backends', {
        headers: { authorization: 'Bearer push-token-for-tests' },
      });
      const { backends } = (await res.body.json()) as { backends: BackendView[] };
      const loads = Object.fromEntries(backends.flatMap((b) => b.endpoints).map((e) => [e.url, e.load]));
      return Object.entries(expected).every(([url, l]) => {
        const got = loads[url];
        return got && got.waiting === l.waiting && got.running === l.running && got.kvCacheUsage === l.kv;
      });
    },
    maxMs,
    `the scraped load ${JSON.stringify(expected)} in the admin view`,
  );
}

describe('balancing', () => {
  it('RoundRobin spreads requests by weight, smoothly', async () => {
    const a = await cleanups.upstream('a');
    const b = await cleanups.upstream('b');
    const c = await cleanups.upstream('c');
    const be = backend('ns/rr', [a.url, b.url, c.url]);
    be.endpoints[0]!.weight = 3;
    const plane = await planeWith(be);
    const order: string[] = [];
    for (let i = 0; i < 50; i++) {
      const r = await send(plane);
      order.push((JSON.parse(r.body) as { upstream: string }).upstream);
    }
    expect([a.requests.length, b.requests.length, c.requests.length]).toEqual([30, 10, 10]);
    // Smooth: the heavy endpoint never gets more than its share in a row.
    expect(order.join(',')).not.toContain('a,a,a');
  });

  it('LeastRequest avoids the endpoint with requests in flight', async () => {
    const held: ServerResponse[] = [];
    const slow = await cleanups.upstream('slow', (_req, res) => held.push(res));
    const fast = await cleanups.upstream('fast');
    const plane = await planeWith(
      backend('ns/lr', [slow.url, fast.url], {
        balancing: {
          policy: 'LeastRequest',
          maxInflightPerEndpoint: 0,
          maxQueue: 0,
          queueTimeoutMs: 1000,
          metricsPath: '/metrics',
        },
      }),
    );
    const pending: Promise<unknown>[] = [];
    for (let i = 0; i < 20; i++) {
      const fastBefore = fast.requests.length;
      const p = send(plane);
      pending.push(p);
      // Wait until this request reached an upstream; let it finish when it reached the fast one.
      await until(() => slow.requests.length + fast.requests.length === i + 1);
      if (fast.requests.length > fastBefore) await p;
    }
    expect(slow.requests.length).toBeLessThanOrEqual(1);
    expect(fast.requests.length).toBeGreaterThanOrEqual(19);
    for (const res of held) res.end('{}');
    await Promise.all(pending);
  });

  // Scraped load counts for 3 scrape intervals; older, the pick falls back to LeastRequest (a random one
  // of two here). With 250 ms intervals this test needed each batch sent within 750 ms of a scrape, which a
  // loaded machine did not always give. With 60 s a scrape stays fresh for 180 s, longer than the test
  // may run (its own timeout), so no stall can make a pick fall back. A runtime scrapes when it starts,
  // then on its interval: the test applies a changed snapshot to have the moved load scraped at once, and
  // waits until the admin view shows each load before sending (bounded).
  it(
    'QueueAware sends traffic to the endpoint whose model server reports the shorter queue',
    { timeout: 60_000 },
    async () => {
      const load: Record<string, ModelLoad> = {
        busy: { waiting: 12, running: 16, kv: 0.95 },
        idle: { waiting: 0, running: 1, kv: 0.1 },
      };
      const busy = await metricsUpstream('busy', load);
      const idle = await metricsUpstream('idle', load);
      const be = queueAwareBackend('ns/qa', [busy.url, idle.url]);
      const plane = await planeWith(be, { scrapeIntervalMs: 60_000 });
      await untilScraped(plane, { [busy.url]: load.busy!, [idle.url]: load.idle! });
      const count = (up: Upstream) => up.requests.filter((r) => r.url !== '/metrics').length;
      for (let i = 0; i < 20; i++) await send(plane);
      expect(count(idle)).toBe(20);
      expect(count(busy)).toBe(0);
      // The load moves; a new runtime (any content change) scrapes it, and the other endpoint is preferred.
      load.busy = { waiting: 0, running: 0, kv: 0 };
      load.idle = { waiting: 20, running: 16, kv: 0.9 };
      expect(plane.applySnapshot(snapshotFor(be, acme.key, { replicas: 2 }))).toMatchObject({
        changed: true,
      });
      await untilScraped(plane, { [busy.url]: load.busy, [idle.url]: load.idle });
      for (let i = 0; i < 20; i++) await send(plane);
      expect(count(busy)).toBe(20);
      expect(count(idle)).toBe(20);
    },
  );

  it('QueueAware scrapes the model servers again every scrapeIntervalMs', async () => {
    const load: Record<string, ModelLoad> = {
      a: { waiting: 3, running: 2, kv: 0.5 },
      b: { waiting: 0, running: 1, kv: 0.1 },
    };
    const a = await metricsUpstream('a', load);
    const b = await metricsUpstream('b', load);
    const plane = await planeWith(queueAwareBackend('ns/qa', [a.url, b.url]), { scrapeIntervalMs: 250 });
    await untilScraped(plane, { [a.url]: load.a!, [b.url]: load.b! });
    const scrapes = a.requests.filter((r) => r.url === '/metrics').length;
    // No new snapshot: only the interval's scrapes can bring the change in (waited for, bounded).
    load.a = { waiting: 0, running: 0, kv: 0 };
    load.b = { waiting: 7, running: 16, kv: 0.9 };
    await untilScraped(plane, { [a.url]: load.a, [b.url]: load.b });
    expect(a.requests.filter((r) => r.url === '/metrics').length).toBeGreaterThan(scrapes);
  });

  it('queues requests when every endpoint is at maxInflightPerEndpoint and answers 503 with Retry-After when the queue is full', async () => {
    const held: ServerResponse[] = [];
    const one = await cleanups.upstream('one', (_req, res) => held.push(res));
    const plane = await planeWith(
      backend('ns/limit', [one.url], {
        balancing: {
          policy: 'RoundRobin',
          maxInflightPerEndpoint: 1,
          maxQueue: 1,
          queueTimeoutMs: 30_000,
          metricsPath: '/metrics',
        },
      }),
    );
    const first = send(plane);
    await until(() => held.length === 1);
    const second = send(plane);
    const queued = () =>
      request(plane.adminUrl + '/metrics')
        .then((r) => r.body.text())
        .then((t) => t.includes('gpugate_upstream_queued_requests{backend="ns/limit"} 1'));
    let isQueued = false;
    for (let i = 0; i < 500 && !isQueued; i++) isQueued = await queued();
    expect(isQueued).toBe(true);
    // The third finds the queue full.
    const third = await send(plane);
    expect(third.status).toBe(503);
    expect(third.headers['retry-after']).toBe('30');
    expect((JSON.parse(third.body) as { error: { code: string } }).error.code).toBe('endpoints_busy');
    expect(one.requests).toHaveLength(1);
    held[0]!.end('{}');
    expect((await first).status).toBe(200);
    await until(() => held.length === 2);
    held[1]!.end('{}');
    expect((await second).status).toBe(200);
    expect(one.requests).toHaveLength(2);
  });
});
