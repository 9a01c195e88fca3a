// Health: passive ejection when an upstream dies and recovery when it comes back, active checks
// against the simulator's /health, and panic routing when nothing is healthy.
import { afterEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { Backend } from '../../dataplane/config/snapshot.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import { startSimulator } from '../fixtures/gpusim/index.ts';
import {
  apiKey,
  backend,
  chat,
  cleanupList,
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

async function metric(plane: DataPlane, line: string): Promise<number> {
  const text = await (await request(plane.adminUrl + '/metrics')).body.text();
  const found = text.split('\n').find((l) => l.startsWith(line + ' '));
  return found ? Number(found.slice(line.length + 1)) : 0;
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
});
