// Health: passive ejection when an upstream dies and recovery when it comes back, active checks
// against the simulator's /health, and panic routing when nothing is healthy.
import { afterEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { Backend } from '../../dataplane/config/snapshot.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import { MAX_METRICS_BYTES } from '../../dataplane/upstream/health.ts';
import { repeatedBody } from '../fixtures/bodies.ts';
import { startSimulator } from '../fixtures/gpusim/index.ts';
import {
  apiKey,
  backend,
  chat,
  cleanupList,
  metric,
  queueAwareBackend,
  snapshotFor,
  startUpstream,
  until,
  type PlaneOptions,
  type Upstream,
} from './harness.ts';

const acme = apiKey('acme');
const cleanups = cleanupList();
afterEach(cleanups.close);

async function planeWith(b: Backend, opts: PlaneOptions = {}): Promise<DataPlane> {
  const plane = await cleanups.plane(opts);
  expect(plane.applySnapshot(snapshotFor(b, acme.key)).accepted).toBe(true);
  return plane;
}

async function send(plane: DataPlane, model = 'sim-llama'): Promise<number> {
  const r = await request(plane.url + '/v1/chat/completions', {
    method: 'POST',
    body: chat(model, { max_tokens: 1 }),
    headers: { 'content-type': 'application/json', authorization: `Bearer ${acme.secret}` },
  });
  await r.body.dump();
  return r.statusCode;
}

describe('health', () => {
  it('ejects an upstream that was killed, serves every request from the other, and takes it back after a restart', async () => {
    let a: Upstream = await startUpstream('a');
    const b = await cleanups.upstream('b');
    const port = a.port;
    const plane = await planeWith(backend('ns/ej', [a.url, b.url]), {
      outlier: { consecutiveFailures: 2, baseEjectionMs: 100, maxEjectionMs: 1000 },
    });
    for (let i = 0; i < 4; i++) expect(await send(plane)).toBe(200);
    expect(a.requests.length).toBe(2);

    await a.close();
    // Connection refused is retried on b: no client sees the dead endpoint.
    for (let i = 0; i < 20; i++) expect(await send(plane)).toBe(200);
    const ejections = await metric(plane, 'gpugate_upstream_ejections_total{backend="ns/ej"}');
    expect(ejections).toBeGreaterThanOrEqual(1);
    const connectErrors = await metric(
      plane,
      'gpugate_upstream_errors_total{backend="ns/ej",kind="connect"}',
    );
    // Ejected after two failures, then tried once per expired ejection (a failed probe ejects again): at
    // most one attempt per ejection beyond the first two, however long the 20 requests took.
    expect(connectErrors).toBeLessThanOrEqual(2 + (ejections - 1));

    a = await cleanups.upstream('a-again', undefined, { port });
    for (let i = 0; i < 2000 && a.requests.length === 0; i++) {
      expect(await send(plane)).toBe(200);
      if (i % 20 === 19) await new Promise((r) => setTimeout(r, 20));
    }
    expect(a.requests.length).toBeGreaterThan(0);
  });

  it('stops routing to an endpoint that fails its active health checks and routes to it again when it passes', async () => {
    const sick = await startSimulator({ models: ['sim-llama'], decodeMsPerToken: 1 });
    const well = await startSimulator({ models: ['sim-llama'], decodeMsPerToken: 1 });
    cleanups.push(
      () => sick.close(),
      () => well.close(),
    );
    const plane = await planeWith(
      backend('ns/hc', [sick.url, well.url], {
        healthCheck: {
          path: '/health',
          intervalMs: 30,
          timeoutMs: 500,
          healthyThreshold: 2,
          unhealthyThreshold: 2,
        },
      }),
    );
    const completions = (s: typeof sick) => s.stats().requestsByPath['/v1/chat/completions'] ?? 0;
    sick.setHealthy(false);
    const checksBefore = sick.stats().requestsByPath['/health'] ?? 0;
    await until(() => (sick.stats().requestsByPath['/health'] ?? 0) >= checksBefore + 3);
    const before = completions(sick);
    for (let i = 0; i < 10; i++) expect(await send(plane)).toBe(200);
    expect(completions(sick)).toBe(before);
    sick.setHealthy(true);
    const checksAgain = sick.stats().requestsByPath['/health'] ?? 0;
    await until(() => (sick.stats().requestsByPath['/health'] ?? 0) >= checksAgain + 3);
    for (let i = 0; i < 10; i++) expect(await send(plane)).toBe(200);
    expect(completions(sick)).toBeGreaterThan(before);
  });

  it('routes to unhealthy endpoints rather than failing everything when none is healthy, and counts it', async () => {
    const only = await startSimulator({ models: ['sim-llama'], decodeMsPerToken: 1 });
    cleanups.push(() => only.close());
    only.setHealthy(false);
    const plane = await planeWith(
      backend('ns/panic', [only.url], {
        healthCheck: {
          path: '/health',
          intervalMs: 30,
          timeoutMs: 500,
          healthyThreshold: 1,
          unhealthyThreshold: 1,
        },
      }),
    );
    await until(() => (only.stats().requestsByPath['/health'] ?? 0) >= 2);
    expect(await send(plane)).toBe(200);
    expect(
      await metric(plane, 'gpugate_upstream_panic_routing_total{backend="ns/panic"}'),
    ).toBeGreaterThanOrEqual(1);
  });

  it('reads at most a bounded part of a huge health-check or metrics body: the check still passes on its 200, the scrape is skipped', async () => {
    const huge = 64 * 1024 * 1024;
    const cut: Record<string, number> = {};
    const up = await cleanups.upstream('huge-bodies', (req, res) => {
      const path = req.url ?? '';
      if (path === '/health' || path === '/metrics') {
        res.once('close', () => {
          if (!res.writableFinished) cut[path] = (cut[path] ?? 0) + 1;
        });
        res.writeHead(200, { 'content-type': 'text/plain' });
        // A valid metric first, so a scrape that read it all would have a load to show.
        res.write('vllm:num_requests_waiting 7\n');
        hugeComments(huge).pipe(res);
        return;
      }
      const payload = JSON.stringify({
        choices: [{ index: 0, message: { role: 'assistant', content: 'hi' } }],
      });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(payload);
    });
    const plane = await planeWith(
      queueAwareBackend('ns/huge', [up.url], {
        healthCheck: {
          path: '/health',
          intervalMs: 30,
          timeoutMs: 5000,
          healthyThreshold: 1,
          unhealthyThreshold: 1,
        },
      }),
      { scrapeIntervalMs: 50 },
    );
    // Both kinds of request were cut short, more than once: the data plane stopped reading them.
    await until(() => (cut['/health'] ?? 0) >= 2 && (cut['/metrics'] ?? 0) >= 2);
    expect(await send(plane)).toBe(200);
    expect(await metric(plane, 'gpugate_upstream_panic_routing_total{backend="ns/huge"}')).toBe(0);
    expect(await metric(plane, 'gpugate_upstream_health_check_transitions_total{backend="ns/huge"}')).toBe(0);
    const status = (await (await request(plane.adminUrl + '/upstreams')).body.json()) as {
      endpoints: { load: unknown }[];
    }[];
    expect(status[0]?.endpoints[0]?.load).toBeNull();
    expect(MAX_METRICS_BYTES).toBeLessThan(huge);
  });
});

/** `bytes` of Prometheus comment lines, generated as they are read. */
const hugeComments = (bytes: number) => repeatedBody(Buffer.from(`# ${'x'.repeat(1021)}\n`), bytes);
