// Forwarding over real sockets: headers both ways, SSE chunk by chunk, client aborts, big uploads.
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import {
  apiKey,
  backend,
  chat,
  cleanupList,
  snapshot,
  snapshotFor,
  startPlane,
  startUpstream,
  tenant,
  until,
  type Upstream,
} from './harness.ts';

describe('forwarding', () => {
  let plane: DataPlane;
  let echo: Upstream;
  let sse: Upstream;
  let sim: Simulator;
  const acme = apiKey('acme');
  /** Resolvers the SSE upstream waits on between chunks: it sends chunk i+1 only after the client saw chunk i. */
  const clientSaw: ((n: number) => void)[] = [];
  let upstreamSentAll = false;
  /** The head-first upstream: sends its first event when called (the client saw the head) or after a bound. */
  let sendFirstEvent: (() => void) | null = null;
  let firstEventSent = false;
  const cleanups = cleanupList();

  beforeAll(async () => {
    echo = await cleanups.upstream('echo');
    sse = await cleanups.upstream('sse', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      let i = 0;
      const sendNext = () => {
        if (i === 5) {
          res.write('data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":5}}\n\n');
          res.end('data: [DONE]\n\n');
          upstreamSentAll = true;
          return;
        }
        const n = i++;
        clientSaw.push((seen) => {
          if (seen === n) sendNext();
        });
        res.write(`data: {"choices":[{"delta":{"content":"tok${n}"}}]}\n\n`);
      };
      sendNext();
    });
    const headFirst = await cleanups.upstream('head-first', (_req, res) => {
      // As vLLM does: the head goes out at once, the first token only after prefill; here, once the
      // client has seen the head, or after a bound so that a gateway holding the head fails the test
      // below instead of hanging it.
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.flushHeaders();
      const send = () => {
        clearTimeout(bound);
        if (firstEventSent) return;
        firstEventSent = true;
        res.end('data: {"choices":[{"delta":{"content":"first"}}]}\n\ndata: [DONE]\n\n');
      };
      const bound = setTimeout(send, 3_000);
      sendFirstEvent = send;
    });
    sim = await startSimulator({ models: ['sim-llama'], decodeMsPerToken: 20, outputTokens: 400 });
    cleanups.push(() => sim.close());
    plane = await cleanups.plane({}, 1000);
    const applied = plane.applySnapshot(
      snapshot({
        backends: [
          backend('ns/echo', [echo.url], {
            models: ['echo'],
            upstreamAuth: { header: 'Authorization', value: 'Bearer backend-secret' },
            maxRequestBytes: 200 * 1024 * 1024,
          }),
          backend('ns/sse', [sse.url], { models: ['sse'] }),
          backend('ns/head-first', [headFirst.url], { models: ['head-first'] }),
          backend('ns/sim', [sim.url], { models: ['sim-llama'] }),
          backend('ns/limited', [echo.url], {
            models: [],
            routes: [{ pathPrefix: '/limited', methods: ['POST'], public: false }],
            maxRequestBytes: 1024,
          }),
        ],
        tenants: [tenant('acme')],
        keys: [acme.key],
      }),
    );
    expect(applied.accepted).toBe(true);
  });

  afterAll(cleanups.close);

  it('strips spoofed identity and hop-by-hop headers, never forwards the client key, adds the backend credential', async () => {
    echo.requests.length = 0;
    // node:http sends exactly these headers (undici would manage Connection itself).
    const body = chat('echo');
    const res = await new Promise<{ statusCode: number; headers: IncomingHttpHeaders }>((resolve, reject) => {
      const r = httpRequest(
        plane.url + '/v1/chat/completions?x=1',
        {
          method: 'POST',
          agent: false,
          headers: {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(body),
            authorization: `Bearer ${acme.secret}`,
            'x-api-key': acme.secret,
            'x-gpugate-tenant': 'someone-else',
            'x-gpugate-anything': 'spoof',
            'x-user-id': 'admin',
            'x-username': 'root',
            'x-request-id': 'client-req-7',
            'x-forwarded-for': '10.9.8.7',
            'proxy-authorization': 'Basic abc',
            'x-custom-hop': 'drop-me',
            connection: 'close, x-custom-hop',
          },
        },
        (response) => {
          response.resume();
          response.on('end', () =>
            resolve({ statusCode: response.statusCode ?? 0, headers: response.headers }),
          );
        },
      );
      r.on('error', reject);
      r.end(body);
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-request-id']).toBe('client-req-7');
    expect(echo.requests).toHaveLength(1);
    const got = echo.requests[0]!;
    expect(got.url).toBe('/v1/chat/completions?x=1');
    const h = got.headers;
    expect(h['x-gpugate-tenant']).toBe('acme');
    expect(h['x-gpugate-anything']).toBeUndefined();
    expect(h['x-user-id']).toBeUndefined();
    expect(h['x-username']).toBeUndefined();
    expect(h['x-api-key']).toBeUndefined();
    expect(h.authorization).toBe('Bearer backend-secret');
    expect(h['proxy-authorization']).toBeUndefined();
    expect(h['x-custom-hop']).toBeUndefined();
    expect(h['x-request-id']).toBe('client-req-7');
    expect(h['x-forwarded-for']).toBe('10.9.8.7, 127.0.0.1');
    expect(h['x-forwarded-proto']).toBe('http');
    expect(h['x-forwarded-host']).toBe(new URL(plane.url).host);
    expect(h.via).toBe(`1.1 gpugate (${plane.instanceId})`);
    expect(JSON.stringify(got)).not.toContain(acme.secret);
    expect(got.body).toBe(chat('echo'));
  });

  it('replaces an insane incoming X-Request-Id with a generated one', async () => {
    const res = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat('echo'),
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${acme.secret}`,
        'x-request-id': 'bad id with spaces',
      },
    });
    await res.body.dump();
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('passes SSE through chunk by chunk: each chunk reaches the client before the upstream sends the next', async () => {
    clientSaw.length = 0;
    upstreamSentAll = false;
    const res = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat('sse', { stream: true }),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${acme.secret}` },
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream');
    expect(res.headers['content-encoding']).toBeUndefined();
    let text = '';
    let seen = -1;
    for await (const chunk of res.body) {
      text += (chunk as Buffer).toString();
      // The upstream holds chunk n+1 until the client reports chunk n: a gateway that buffered
      // would never deliver chunk n and the stream would stall.
      for (;;) {
        const next = seen + 1;
        if (!text.includes(`tok${next}"`)) break;
        expect(upstreamSentAll).toBe(false);
        seen = next;
        clientSaw[next]?.(next);
      }
    }
    expect(seen).toBe(4);
    expect(text).toContain('[DONE]');
  });

  it('sends a stream’s response head on as the backend sends it, before the first event exists', async () => {
    firstEventSent = false;
    const res = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat('head-first', { stream: true }),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${acme.secret}` },
    });
    // undici resolves on the head: it came through while the backend had sent nothing else.
    expect(firstEventSent).toBe(false);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream');
    sendFirstEvent?.();
    const text = await res.body.text();
    expect(text).toContain('"first"');
    expect(text).toContain('[DONE]');
  });

  it('aborts the upstream request when the client goes away mid-stream', async () => {
    const before = sim.stats().aborts;
    const controller = new AbortController();
    const res = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat('sim-llama', { stream: true, max_tokens: 400 }),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${acme.secret}` },
      signal: controller.signal,
    });
    expect(res.statusCode).toBe(200);
    const it = res.body[Symbol.asyncIterator]();
    await it.next();
    controller.abort();
    await until(() => sim.stats().aborts > before);
    expect(sim.stats().aborts).toBe(before + 1);
  });

  it('streams a 100 MiB upload to the backend without buffering it', async () => {
    echo.requests.length = 0;
    const total = 100 * 1024 * 1024;
    const chunk = Buffer.alloc(256 * 1024, 7);
    let sent = 0;
    let upstreamSeenBeforeEnd = false;
    const body = new Readable({
      read() {
        if (sent >= total) return this.push(null);
        if (sent >= total / 2 && !upstreamSeenBeforeEnd) {
          // Halfway, hold the rest back until the backend has received bytes: a gateway that
          // buffered the whole body would never forward any and this upload would stall.
          void until(() => (echo.requests.at(-1)?.bodyBytes ?? 0) > 0).then(() => {
            upstreamSeenBeforeEnd = true;
            sent += chunk.length;
            this.push(chunk);
          });
          return;
        }
        sent += chunk.length;
        this.push(chunk);
      },
    });
    const res = await request(plane.url + '/v1/uploads', {
      method: 'POST',
      body,
      headers: {
        'content-type': 'application/octet-stream',
        'content-length': String(total),
        authorization: `Bearer ${acme.secret}`,
        'x-gpugate-model': 'echo',
      },
    });
    expect(res.statusCode).toBe(200);
    const answer = (await res.body.json()) as { receivedBytes: number };
    expect(upstreamSeenBeforeEnd).toBe(true);
    expect(answer.receivedBytes).toBe(total);
    expect(echo.requests.at(-1)?.bodyBytes).toBe(total);
  });

  it('cuts a chunked upload that grows past maxRequestBytes', async () => {
    echo.requests.length = 0;
    let sent = 0;
    const body = new Readable({
      read() {
        if (sent >= 8192) return this.push(null);
        sent += 1024;
        this.push(Buffer.alloc(1024, 1));
      },
    });
    const outcome = await request(plane.url + '/limited', {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/octet-stream', authorization: `Bearer ${acme.secret}` },
    }).then(
      async (r) => {
        await r.body.dump();
        return r.statusCode;
      },
      () => 'connection error',
    );
    expect(outcome).not.toBe(200);
    expect(echo.requests.every((r) => r.bodyBytes <= 2048)).toBe(true);
  });
});

describe('slow request bodies', () => {
  it('answers 408 when a small JSON body does not arrive in time, and forwards nothing', async () => {
    const up = await startUpstream('never');
    const key = apiKey('acme');
    const plane = await startPlane({ bodyReadTimeoutMs: 100 });
    try {
      plane.applySnapshot(snapshotFor(backend('ns/b', [up.url]), key.key));
      const { port } = new URL(plane.url);
      const answer = await new Promise<string>((resolve, reject) => {
        const socket = connect(Number(port), '127.0.0.1', () => {
          socket.write(
            `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nAuthorization: Bearer ${key.secret}\r\n\r\n{"model":`,
          );
        });
        let text = '';
        socket.on('data', (d: Buffer) => (text += d.toString()));
        socket.on('close', () => resolve(text));
        socket.on('error', reject);
      });
      expect(answer).toMatch(/^HTTP\/1\.1 408 /);
      expect(answer).toContain('"code":"request_timeout"');
      expect(up.requests).toHaveLength(0);
    } finally {
      await plane.close({ drainMs: 200 });
      await up.close();
    }
  });
});
