// A response whose length the upstream declared is ended by its last chunk (one end(chunk) instead of
// write + end): the client must still get every byte, in order, however the upstream splits them,
// and a HEAD answer (a length, no body) must not wait for a body that never comes.
import { Client } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { apiKey, backend, cleanupList, MemorySink, snapshotFor, until } from './harness.ts';

const cleanups = cleanupList();
afterEach(() => cleanups.close());

describe('responses of declared length', () => {
  it('arrive whole and counted when the upstream sends them in many pieces', async () => {
    const body = Buffer.alloc(3 * 1024 * 1024 + 7);
    for (let i = 0; i < body.length; i++) body[i] = (i * 31) % 251;
    const up = await cleanups.upstream('model', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
      let at = 0;
      const next = () => {
        if (at >= body.length) return;
        const piece = body.subarray(at, at + 200_000 + (at % 3));
        at += piece.length;
        res.write(piece);
        setImmediate(next);
      };
      next();
    });
    const k = apiKey('acme');
    const sink = new MemorySink();
    const plane = await cleanups.plane({ usageSink: sink });
    plane.applySnapshot(snapshotFor(backend('ns/b', [up.url]), k.key));
    const client = new Client(plane.url);
    cleanups.push(() => client.close());
    const r = await client.request({
      path: '/v1/files/blob',
      method: 'GET',
      headers: { authorization: `Bearer ${k.secret}` },
    });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-length']).toBe(String(body.length));
    const got = Buffer.from(await r.body.arrayBuffer());
    expect(got.length).toBe(body.length);
    expect(got.equals(body)).toBe(true);
    await until(() => sink.events.length === 1);
    expect(sink.events[0]).toMatchObject({ status: 200, bytesOut: body.length });
  });

  it('answers HEAD with the length and no body, and the same client then gets a full GET', async () => {
    const up = await cleanups.upstream('model', (req, res) => {
      const payload = '{"object":"thing","size":12345}';
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(payload),
      });
      res.end(req.method === 'HEAD' ? undefined : payload);
    });
    const k = apiKey('acme');
    const plane = await cleanups.plane();
    plane.applySnapshot(snapshotFor(backend('ns/b', [up.url]), k.key));
    const client = new Client(plane.url, { pipelining: 1 });
    cleanups.push(() => client.close());
    const headers = { authorization: `Bearer ${k.secret}` };
    const head = await client.request({ path: '/v1/things/1', method: 'HEAD', headers });
    expect(head.statusCode).toBe(200);
    expect(head.headers['content-length']).toBe('31');
    expect((await head.body.arrayBuffer()).byteLength).toBe(0);
    const get = await client.request({ path: '/v1/things/1', method: 'GET', headers });
    expect(get.statusCode).toBe(200);
    expect(await get.body.json()).toEqual({ object: 'thing', size: 12345 });
    expect(up.requests.map((q) => q.method)).toEqual(['HEAD', 'GET']);
  });
});
