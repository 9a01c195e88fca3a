// Admin views against a running fleet: a killed simulator shows as ejected with its reason, the
// tenant view shows limits and bucket levels after traffic, the views need the push token, and
// /readyz/backends answers a load balancer without one.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import type { BackendView } from '../../dataplane/admin/views.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { apiKey, backend, chat, snapshot, startPlane, tenant } from './harness.ts';

const TOKEN = 'push-token-for-tests';
const auth = { authorization: `Bearer ${TOKEN}` };

describe('admin views', () => {
  let plane: DataPlane;
  let alive: Simulator;
  let dead: Simulator;
  const key = apiKey('team/a', { limits: { requestsPerMinute: 600 } });
  // Refills one request every 10 s, so a bucket level read right after traffic does not depend on how
  // fast a loaded machine gets there (1200/min refills a token every 50 ms).
  const SLOW_PER_MINUTE = 6;
  const slowKey = apiKey('team/slow');

  beforeAll(async () => {
    alive = await startSimulator({ models: ['sim-llama'], decodeMsPerToken: 0, outputTokens: 2 });
    dead = await startSimulator({ models: ['sim-llama'] });
    await dead.close(); // killed: its port refuses connections
    plane = await startPlane({ outlier: { consecutiveFailures: 1, baseEjectionMs: 600_000 } });
    const snap = snapshot({
      backends: [
        backend('gpu/llama', [alive.url, dead.url], { retries: { attempts: 2, retryOnStatus: [] } }),
      ],
      tenants: [
        tenant('team/a', { limits: { requestsPerMinute: 1200, concurrentRequests: 8 } }),
        tenant('team/slow', { limits: { requestsPerMinute: SLOW_PER_MINUTE } }),
      ],
      keys: [key.key, slowKey.key],
    });
    expect(plane.applySnapshot(snap).accepted).toBe(true);
  });
  afterAll(async () => {
    await plane.close({ drainMs: 1000 });
    await alive.close();
  });

  const get = async (path: string, headers: Record<string, string> = auth) => {
    const res = await request(plane.adminUrl + path, { headers });
    return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
  };

  it('refuses every admin view without the push token', async () => {
    for (const path of ['/admin/info', '/admin/backends', '/admin/tenants/team/a']) {
      expect((await get(path, {})).status).toBe(401);
      expect((await get(path, { authorization: 'Bearer wrong' })).status).toBe(401);
    }
  });

  it('shows a killed endpoint as ejected with the connect failure as its reason', async () => {
    // Round robin reaches the dead endpoint within two requests; the retry answers from the live one.
    for (let i = 0; i < 4; i++) {
      const res = await request(plane.url + '/v1/chat/completions', {
        method: 'POST',
        headers: { authorization: `Bearer ${key.secret}`, 'content-type': 'application/json' },
        body: chat('sim-llama', { max_tokens: 2 }),
      });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    const { status, body } = await get('/admin/backends');
    expect(status).toBe(200);
    const [b] = body.backends as BackendView[];
    expect(b?.id).toBe('gpu/llama');
    expect(b?.healthy).toBe(1);
    const [up, down] = b!.endpoints;
    expect(up).toMatchObject({ url: alive.url, state: 'healthy', reason: null, source: 'static' });
    expect(down).toMatchObject({ url: dead.url, state: 'ejected', ejections: 1 });
    expect(down?.reason).toMatch(/outlier ejection #1.*connect/);
    expect(down?.lastFailure?.kind).toBe('connect');
    expect(down?.ejectedForMs).toBeGreaterThan(0);
  });

  it('reports version, revision, replica and features in /admin/info', async () => {
    const { body } = await get('/admin/info');
    expect(body).toMatchObject({
      viewsVersion: 1,
      replica: plane.instanceId,
      snapshot: { revision: plane.revision(), backends: 1, tenants: 2, keys: 2 },
      features: { tracing: false, accessLog: true },
    });
    expect(typeof body.version).toBe('string');
    expect(body.uptimeMs).toBeGreaterThanOrEqual(0);
  });

  it('shows a tenant’s configured limits, this replica’s bucket levels and its keys by prefix only', async () => {
    const { status, body } = await get('/admin/tenants/team/a');
    expect(status).toBe(200);
    expect(body).toMatchObject({
      tenant: 'team/a',
      suspended: false,
      limits: {
        configured: { requestsPerMinute: 1200, concurrentRequests: 8, tokensPerMinute: null },
        replica: { requests: { limitPerMinute: 1200 }, concurrent: { limit: 8, inflight: 0 } },
      },
      quota: null,
    });
    const keys = body.keys as { prefix: string; limits: { configured: { requestsPerMinute: number } } }[];
    expect(keys).toHaveLength(1);
    expect(keys[0]?.prefix).toBe(key.key.prefix);
    expect(keys[0]?.limits.configured.requestsPerMinute).toBe(600);
    expect(JSON.stringify(body)).not.toContain(key.secret);
    expect(JSON.stringify(body)).not.toContain(key.key.sha256);
    expect((await get('/admin/tenants/team/nobody')).status).toBe(404);
  });

  it('shows this replica’s request bucket drained by the requests just served, refilled only by the time since', async () => {
    const sent = 2;
    const started = performance.now();
    for (let i = 0; i < sent; i++) {
      const res = await request(plane.url + '/v1/chat/completions', {
        method: 'POST',
        headers: { authorization: `Bearer ${slowKey.secret}`, 'content-type': 'application/json' },
        body: chat('sim-llama', { max_tokens: 2 }),
      });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    const { body } = await get('/admin/tenants/team/slow');
    const elapsedMs = performance.now() - started;
    const requests = (body.limits as { replica: { requests: { limitPerMinute: number; remaining: number } } })
      .replica.requests;
    expect(requests.limitPerMinute).toBe(SLOW_PER_MINUTE);
    // The bucket started full; at most elapsedMs × rate came back since the first request was taken
    // (none unless this took over 10 s).
    const refilled = Math.floor((elapsedMs * SLOW_PER_MINUTE) / 60_000);
    expect(requests.remaining).toBeGreaterThanOrEqual(SLOW_PER_MINUTE - sent);
    expect(requests.remaining).toBeLessThanOrEqual(
      Math.min(SLOW_PER_MINUTE, SLOW_PER_MINUTE - sent + refilled),
    );
  });

  it('answers a load balancer on /readyz/backends without a token, with ids and counts only', async () => {
    const { status, body } = await get('/readyz/backends', {});
    expect(status).toBe(200);
    expect(body.backends).toEqual([{ id: 'gpu/llama', healthy: 1, total: 2 }]);
  });
});
