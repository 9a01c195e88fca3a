// The public port's front door (dataplane/http/front-door.ts) serves proxied requests without
// Fastify; what Fastify must still decide has to reach Fastify exactly as before: its own routes on
// the public port (also under a percent-encoded path, which only its router decodes), and the 503 it
// answers once the server is closing.
import { connect, type Socket } from 'node:net';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { apiKey, backend, cleanupList, snapshotFor, until } from './harness.ts';

const cleanups = cleanupList();
afterEach(() => cleanups.close());

/** Everything the server sends on `socket` until it closes the connection (bounded by the test timeout). */
function readAll(socket: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (text += d));
    socket.once('close', () => resolve(text));
    socket.once('error', reject);
  });
}

function refusesConnections(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const s = connect(Number(port), hostname);
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

describe('front door', () => {
  it('hands the usage route to Fastify, also under a percent-encoded path, and other methods on its path to the proxy', async () => {
    const up = await cleanups.upstream('model');
    const k = apiKey('acme');
    // No usage database: Fastify's /v1/usage route answers 503 usage_unavailable itself.
    const plane = await cleanups.plane();
    plane.applySnapshot(snapshotFor(backend('ns/b', [up.url]), k.key));
    const auth = { authorization: `Bearer ${k.secret}` };
    for (const path of ['/v1/usage', '/v1/usage?from=2026-01-01', '/v1/%75sage']) {
      const r = await request(plane.url + path, { headers: auth });
      const body = (await r.body.json()) as { error: { code: string; request_id: string } };
      expect(r.statusCode, path).toBe(503);
      expect(body.error.code, path).toBe('usage_unavailable');
      expect(body.error.request_id).toBe(r.headers['x-request-id']);
    }
    expect(up.requests).toHaveLength(0);
    // POST is not a Fastify route on /v1/usage: the proxy forwards it under the /v1 route.
    const r = await request(plane.url + '/v1/usage', { method: 'POST', headers: auth, body: '{}' });
    expect(r.statusCode).toBe(200);
    await r.body.dump();
    expect(up.requests.map((q) => `${q.method} ${q.url}`)).toEqual(['POST /v1/usage']);
  });

  it('answers a request that arrives on a kept-alive connection while the gateway closes with 503 and Connection: close, without forwarding it', async () => {
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    const up = await cleanups.upstream('model', (_req, res) => {
      void held.then(() => res.end('{"ok":true}'));
    });
    const k = apiKey('acme');
    const plane = await cleanups.plane({}, 10_000);
    plane.applySnapshot(snapshotFor(backend('ns/b', [up.url]), k.key));
    const { hostname, port } = new URL(plane.url);
    const socket = connect(Number(port), hostname);
    const received = readAll(socket);
    const requestText = `GET /v1/models/x HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer ${k.secret}\r\n\r\n`;
    socket.write(requestText);
    await until(() => up.requests.length === 1);
    const closed = plane.close({ drainMs: 10_000 });
    // Fastify is closing once its server stops accepting (it marks itself closing first).
    await until(() => refusesConnections(plane.url), 5_000, 'the public port refusing connections');
    socket.write(requestText);
    release();
    const text = await received;
    await closed;
    const [first, second] = text.split(/(?=HTTP\/1\.1 )/);
    expect(first).toMatch(/^HTTP\/1\.1 200 /);
    expect(second).toMatch(/^HTTP\/1\.1 503 /);
    expect(second).toMatch(/\r\nconnection: close\r\n/i);
    expect(second).toContain(
      '{"error":"Service Unavailable","message":"Service Unavailable","statusCode":503}',
    );
    expect(up.requests).toHaveLength(1);
  });
});
