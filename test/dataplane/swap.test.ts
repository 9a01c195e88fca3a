// Snapshot swaps under load: no request fails because of a swap, requests in flight finish on the
// runtime they started with, and a removed endpoint's in-flight request still completes.
import type { ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pool } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import {
  apiKey,
  backend,
  chat,
  cleanupList,
  snapshot,
  snapshotFor,
  tenant,
  until,
  type Upstream,
} from './harness.ts';

describe('snapshot swap', () => {
  let plane: DataPlane;
  let a: Upstream;
  let b: Upstream;
  let c: Upstream;
  const held: ServerResponse[] = [];
  const acme = apiKey('acme');
  const other = apiKey('acme');
  const cleanups = cleanupList();

  beforeAll(async () => {
    a = await cleanups.upstream('a');
    b = await cleanups.upstream('b');
    c = await cleanups.upstream('c', (_req, res) => held.push(res));
    plane = await cleanups.plane({}, 1000);
  });
  afterAll(cleanups.close);

  it('swaps 40 snapshots during 4,000 requests from 16 clients with zero failed requests', async () => {
    const variants = [
      () => [backend('ns/llm', [a.url])],
      () => [backend('ns/llm', [b.url])],
      () => [
        backend('ns/llm', [a.url, b.url], {
          balancing: {
            policy: 'LeastRequest',
            maxInflightPerEndpoint: 0,
            maxQueue: 0,
            queueTimeoutMs: 1000,
            metricsPath: '/metrics',
          },
        }),
      ],
      () => [backend('ns/llm', [b.url, a.url]), backend('ns/extra', [a.url], { models: ['x'] })],
    ];
    const apply = (i: number) => {
      const keys = i % 2 === 0 ? [acme.key, other.key] : [acme.key];
      const r = plane.applySnapshot(
        snapshot({ backends: variants[i % variants.length]!(), tenants: [tenant('acme')], keys }),
      );
      expect(r.accepted).toBe(true);
    };
    apply(0);
    const pool = new Pool(plane.url, { connections: 16 });
    const statuses = new Map<number, number>();
    let sent = 0;
    const total = 4000;
    let swaps = 0;
    const client = async () => {
      while (sent < total) {
        sent++;
        const r = await pool.request({
          path: '/v1/chat/completions',
          method: 'POST',
          body: chat('m'),
          headers: { 'content-type': 'application/json', authorization: `Bearer ${acme.secret}` },
        });
        await r.body.dump();
        statuses.set(r.statusCode, (statuses.get(r.statusCode) ?? 0) + 1);
        if (sent % (total / 40) === 0 && swaps < 40) apply(++swaps);
      }
    };
    await Promise.all(Array.from({ length: 16 }, client));
    await pool.close();
    expect(swaps).toBe(40);
    expect(Object.fromEntries(statuses)).toEqual({ 200: total });
  });

  it('lets a request in flight on a removed endpoint finish, then stops using the endpoint', async () => {
    plane.applySnapshot(snapshotFor(backend('ns/llm', [c.url]), acme.key));
    const pool = new Pool(plane.url);
    const inflight = pool.request({
      path: '/v1/chat/completions',
      method: 'POST',
      body: chat('m'),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${acme.secret}` },
    });
    await until(() => held.length === 1);
    expect(plane.applySnapshot(snapshotFor(backend('ns/llm', [a.url]), acme.key)).accepted).toBe(true);
    held[0]!.writeHead(200, { 'content-type': 'application/json' });
    held[0]!.end('{"finished":"on the old runtime"}');
    const res = await inflight;
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toEqual({ finished: 'on the old runtime' });
    const after = await pool.request({
      path: '/v1/chat/completions',
      method: 'POST',
      body: chat('m'),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${acme.secret}` },
    });
    expect(((await after.body.json()) as { upstream: string }).upstream).toBe('a');
    expect(c.requests).toHaveLength(1);
    await pool.close();
  });
});
