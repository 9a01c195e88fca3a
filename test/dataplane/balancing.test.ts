// Each balancing policy's distribution over real upstream sockets, and the in-flight limit queue.
import type { ServerResponse } from 'node:http';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { Backend } from '../../dataplane/config/snapshot.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import {
  apiKey,
  backend,
  chat,
  cleanupList,
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

  it('QueueAware sends traffic to the endpoint whose model server reports the shorter queue', async () => {
    const load: Record<string, { waiting: number; running: number; kv: number }> = {
      busy: { waiting: 12, running: 16, kv: 0.95 },
      idle: { waiting: 0, running: 1, kv: 0.1 },
    };
    const scrapes: Record<string, number> = { busy: 0, idle: 0 };
    const metricsUpstream = (name: string) =>
      cleanups.upstream(name, (req, res) => {
        if (req.url === '/metrics') {
          scrapes[name] = (scrapes[name] ?? 0) + 1;
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
    const busy = await metricsUpstream('busy');
    const idle = await metricsUpstream('idle');
    const plane = await planeWith(
      backend('ns/qa', [busy.url, idle.url], {
        balancing: {
          policy: 'QueueAware',
          maxInflightPerEndpoint: 0,
          maxQueue: 0,
          queueTimeoutMs: 1000,
          metricsPath: '/metrics',
        },
      }),
      // Metrics older than 3 scrape intervals make the pick fall back to LeastRequest: 250 ms keeps the
      // scraped load fresh for 750 ms, longer than a loaded machine delays a scrape timer.
      { scrapeIntervalMs: 250 },
    );
    await until(() => scrapes.busy! > 1 && scrapes.idle! > 1);
    const count = (up: Upstream) => up.requests.filter((r) => r.url !== '/metrics').length;
    for (let i = 0; i < 20; i++) await send(plane);
    expect(count(idle)).toBe(20);
    expect(count(busy)).toBe(0);
    // The load moves: after the next scrapes the other endpoint is preferred.
    load.busy = { waiting: 0, running: 0, kv: 0 };
    load.idle = { waiting: 20, running: 16, kv: 0.9 };
    const seen = { busy: scrapes.busy!, idle: scrapes.idle! };
    await until(() => scrapes.busy! > seen.busy + 1 && scrapes.idle! > seen.idle + 1);
    for (let i = 0; i < 20; i++) await send(plane);
    expect(count(busy)).toBe(20);
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
