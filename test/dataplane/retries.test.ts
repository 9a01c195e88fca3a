// Retries go to another endpoint only when the request certainly did not reach a backend (or the
// backend answered a retryable status), and only with a replayable body.
import { afterEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { Backend } from '../../dataplane/config/snapshot.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import { startSimulator } from '../fixtures/gpusim/index.ts';
import { apiKey, backend, chat, cleanupList, snapshotFor, startUpstream, until } from './harness.ts';

const acme = apiKey('acme');
const cleanups = cleanupList();
afterEach(cleanups.close);

async function planeWith(b: Backend, settings: { maxJsonPeekBytes?: number } = {}): Promise<DataPlane> {
  const plane = await cleanups.plane({
    outlier: { consecutiveFailures: 1000, baseEjectionMs: 1, maxEjectionMs: 1 },
  });
  expect(plane.applySnapshot(snapshotFor(b, acme.key, settings)).accepted).toBe(true);
  return plane;
}

/** A port with nothing listening: bind, note the port, close. */
async function deadUrl(): Promise<string> {
  const up = await startUpstream('dead');
  await up.close();
  return up.url;
}

async function send(plane: DataPlane, body = chat('m')): Promise<{ status: number; code?: string }> {
  const r = await request(plane.url + '/v1/chat/completions', {
    method: 'POST',
    body,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${acme.secret}` },
  });
  const text = await r.body.text();
  if (r.statusCode === 200) return { status: 200 };
  return { status: r.statusCode, code: (JSON.parse(text) as { error: { code: string } }).error.code };
}

describe('retries', () => {
  it('retries a refused connection on another endpoint, and the request reaches a backend exactly once', async () => {
    const live = await cleanups.upstream('live');
    const plane = await planeWith(backend('ns/r', [await deadUrl(), live.url]));
    for (let i = 0; i < 10; i++) expect((await send(plane)).status).toBe(200);
    expect(live.requests).toHaveLength(10);
  });

  it('never retries a request that reached a backend which then dropped the connection', async () => {
    const resetter = await cleanups.upstream('resetter', (req) => req.socket.destroy());
    const other = await cleanups.upstream('other');
    const plane = await planeWith(backend('ns/reset', [resetter.url, other.url]));
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) statuses.push((await send(plane)).status);
    // Round robin alternates: every request that hit the resetter failed with 502 and went nowhere else.
    expect(statuses.filter((s) => s === 502)).toHaveLength(resetter.requests.length);
    expect(resetter.requests.length + other.requests.length).toBe(10);
  });

  it('answers 504 on a first-byte timeout without retrying the request elsewhere', async () => {
    const hung = await startSimulator({ models: ['m'], faults: { hang: true } });
    cleanups.push(() => hung.close());
    const other = await cleanups.upstream('other');
    const plane = await planeWith(
      backend('ns/hang', [hung.url, other.url], {
        timeouts: { connectMs: 1000, firstByteMs: 100, totalMs: 60_000 },
      }),
    );
    const r = await send(plane);
    expect(r).toEqual({ status: 504, code: 'upstream_first_byte_timeout' });
    expect(other.requests).toHaveLength(0);
  });

  it('answers 504 when the total timeout passes before the response ends', async () => {
    const hung = await startSimulator({ models: ['m'], faults: { hang: true } });
    cleanups.push(() => hung.close());
    const plane = await planeWith(
      backend('ns/total', [hung.url], { timeouts: { connectMs: 1000, firstByteMs: 0, totalMs: 100 } }),
    );
    expect(await send(plane)).toEqual({ status: 504, code: 'upstream_timeout' });
    // The upstream request was aborted, not left hanging.
    await until(() => hung.stats().aborts === 1);
  });

  it('does not retry a streamed (not replayable) body, even on a refused connection', async () => {
    const live = await cleanups.upstream('live');
    // maxJsonPeekBytes 0: no body is buffered, so none can be replayed.
    const plane = await planeWith(backend('ns/stream', [await deadUrl(), live.url]), { maxJsonPeekBytes: 0 });
    const first = await send(plane, chat('m'));
    expect(first).toEqual({ status: 503, code: 'upstream_unavailable' });
    expect(live.requests).toHaveLength(0);
  });

  it('retries a status listed in retryOnStatus on another endpoint', async () => {
    const busy = await cleanups.upstream('busy', (_req, res) => {
      res.writeHead(503, { 'content-type': 'application/json' });
      res.end('{"error":"overloaded"}');
    });
    const live = await cleanups.upstream('live');
    const plane = await planeWith(
      backend('ns/status', [busy.url, live.url], { retries: { attempts: 1, retryOnStatus: [503] } }),
    );
    expect((await send(plane)).status).toBe(200);
    expect(busy.requests).toHaveLength(1);
    expect(live.requests).toHaveLength(1);
  });

  it('passes an upstream error body through untouched when retries are used up', async () => {
    const broken = await cleanups.upstream('broken', (_req, res) => {
      res.writeHead(500, { 'content-type': 'text/plain', 'x-upstream': 'yes' });
      res.end('model server exploded');
    });
    const plane = await planeWith(
      backend('ns/err', [broken.url], { retries: { attempts: 2, retryOnStatus: [500] } }),
    );
    const r = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat('m'),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${acme.secret}` },
    });
    expect(r.statusCode).toBe(500);
    expect(r.headers['x-upstream']).toBe('yes');
    expect(await r.body.text()).toBe('model server exploded');
  });
});

describe('requests undici refuses to send', () => {
  it('answers 502 upstream_request_invalid for a misconfigured upstream credential, without blaming or leaking the endpoint', async () => {
    const up = await cleanups.upstream('up');
    const plane = await planeWith(
      backend('ns/bad-auth', [up.url], { upstreamAuth: { header: 'authorization', value: 'Bearer a\nb' } }),
    );
    expect(await send(plane)).toEqual({ status: 502, code: 'upstream_request_invalid' });
    expect(up.requests).toHaveLength(0);
    const status = (await (await request(plane.adminUrl + '/upstreams')).body.json()) as {
      endpoints: { inflight: number; ejectedForMs: number }[];
    }[];
    expect(status[0]?.endpoints[0]).toMatchObject({ inflight: 0, ejectedForMs: 0 });
  });
});
