// Routing, identity and error shapes through a real data plane and real upstream sockets.
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import {
  apiKey,
  backend,
  chat,
  MemorySink,
  snapshot,
  startPlane,
  startUpstream,
  tenant,
  type Upstream,
} from './harness.ts';

describe('routing by path and model', () => {
  let plane: DataPlane;
  let llama: Upstream;
  let mistral: Upstream;
  let images: Upstream;
  const sink = new MemorySink();
  const acme = apiKey('acme');
  const restricted = apiKey('acme', { allowedModels: ['llama-3'] });
  const disabled = apiKey('acme', { disabled: true });
  const expired = apiKey('acme', { expiresAt: '2020-01-01T00:00:00Z' });
  const frozen = apiKey('frozen');

  beforeAll(async () => {
    llama = await startUpstream('llama');
    mistral = await startUpstream('mistral');
    images = await startUpstream('images');
    plane = await startPlane({ usageSink: sink });
    const result = plane.applySnapshot(
      snapshot({
        backends: [
          backend('ns/llama', [llama.url], { models: ['llama-3'] }),
          backend('ns/mistral', [mistral.url], {
            models: ['mistral-7b'],
            routes: [{ pathPrefix: '/v1/chat', methods: ['POST'], public: false }],
          }),
          backend('ns/images', [images.url], {
            protocol: 'generic',
            routes: [
              { pathPrefix: '/v1/images', methods: ['POST'], public: false, cost: 5 },
              { pathPrefix: '/public/health', methods: ['GET'], public: true },
            ],
            maxRequestBytes: 1000,
          }),
        ],
        tenants: [tenant('acme'), tenant('frozen', { suspended: true })],
        keys: [acme.key, restricted.key, disabled.key, expired.key, frozen.key],
      }),
    );
    expect(result.accepted).toBe(true);
  });

  afterAll(async () => {
    await plane.close({ drainMs: 1000 });
    await Promise.all([llama.close(), mistral.close(), images.close()]);
  });

  const post = (path: string, body: string, key: string | null, headers: Record<string, string> = {}) =>
    request(plane.url + path, {
      method: 'POST',
      body,
      headers: {
        'content-type': 'application/json',
        ...(key ? { authorization: `Bearer ${key}` } : {}),
        ...headers,
      },
    });

  it('routes a chat completion to the backend that serves the body model', async () => {
    const res = await post('/v1/chat/completions', chat('mistral-7b'), acme.secret);
    expect(res.statusCode).toBe(200);
    expect(((await res.body.json()) as { upstream: string }).upstream).toBe('mistral');
    expect(res.headers['x-gpugate-backend']).toBe('ns/mistral');
    expect(res.headers.via).toBe('1.1 gpugate');
    expect(res.headers['x-gpugate-version']).toBeTruthy();
    const res2 = await post('/v1/chat/completions', chat('llama-3'), acme.secret);
    expect(((await res2.body.json()) as { upstream: string }).upstream).toBe('llama');
  });

  it('answers an unknown path with 404 in the JSON error shape', async () => {
    const res = await post('/nope', '{}', acme.secret, { 'x-request-id': 'req-abc-1' });
    expect(res.statusCode).toBe(404);
    const body = (await res.body.json()) as { error: Record<string, string> };
    expect(body.error).toEqual({
      type: 'not_found_error',
      code: 'unknown_path',
      message: 'no route for /nope',
      request_id: 'req-abc-1',
    });
    expect(res.headers['x-request-id']).toBe('req-abc-1');
  });

  it('answers a known path with an unknown model with 404 hinting the models the caller may use', async () => {
    const res = await post('/v1/chat/completions', chat('gpt-9'), acme.secret);
    expect(res.statusCode).toBe(404);
    const body = (await res.body.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('unknown_model');
    expect(body.error.message).toContain('llama-3');
    expect(body.error.message).toContain('mistral-7b');
    const limited = await post('/v1/chat/completions', chat('gpt-9'), restricted.secret);
    const lbody = (await limited.body.json()) as { error: { message: string } };
    expect(lbody.error.message).toContain('llama-3');
    expect(lbody.error.message).not.toContain('mistral-7b');
  });

  it('refuses a model the key may not use with 403', async () => {
    const res = await post('/v1/chat/completions', chat('mistral-7b'), restricted.secret);
    expect(res.statusCode).toBe(403);
    expect(((await res.body.json()) as { error: { code: string } }).error.code).toBe('model_not_allowed');
  });

  describe('a model-restricted key and bodies the gateway does not read', () => {
    // A body sent as a stream (no Content-Length: chunked), so the gateway never reads it.
    const streamed = (text: string) => Readable.from([Buffer.from(text)]);
    const send = (path: string, body: string | Readable, headers: Record<string, string>) =>
      request(plane.url + path, {
        method: 'POST',
        body,
        headers: { authorization: `Bearer ${restricted.secret}`, ...headers },
      });
    const reached = (up: Upstream, id: string) => up.requests.filter((q) => q.headers['x-request-id'] === id);

    it('refuses an x-gpugate-model header naming a model the key may not use with 403, whatever the body', async () => {
      const res = await send('/v1/chat/completions', streamed(chat('llama-3')), {
        'content-type': 'application/json',
        'x-gpugate-model': 'mistral-7b',
        'x-request-id': 'hdr-forbidden',
      });
      expect(res.statusCode).toBe(403);
      expect(((await res.body.json()) as { error: { code: string } }).error.code).toBe('model_not_allowed');
      expect(reached(mistral, 'hdr-forbidden')).toHaveLength(0);
      expect(reached(llama, 'hdr-forbidden')).toHaveLength(0);
    });

    it('forwards a streamed or multipart body when the x-gpugate-model header names an allowed model', async () => {
      const chunked = await send('/v1/chat/completions', streamed(chat('llama-3')), {
        'content-type': 'application/json',
        'x-gpugate-model': 'llama-3',
        'x-request-id': 'hdr-chunked',
      });
      expect(chunked.statusCode).toBe(200);
      expect(((await chunked.body.json()) as { upstream: string }).upstream).toBe('llama');
      expect(reached(llama, 'hdr-chunked')[0]?.body).toBe(chat('llama-3'));
      // Without the header both would be refused: by path, /v1/chat goes to ns/mistral (next test).
      const multipart = '--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nllama-3\r\n--b--\r\n';
      const form = await send('/v1/chat/completions', multipart, {
        'content-type': 'multipart/form-data; boundary=b',
        'x-gpugate-model': 'llama-3',
        'x-request-id': 'hdr-multipart',
      });
      expect(form.statusCode).toBe(200);
      expect(((await form.body.json()) as { upstream: string }).upstream).toBe('llama');
      expect(reached(llama, 'hdr-multipart')[0]?.body).toBe(multipart);
    });

    it('refuses an unread body on a backend serving any model with 403 saying how to name the model', async () => {
      const cases: [string, string | Readable, Record<string, string>][] = [
        ['no-ct', '{"model": "mistral-7b"}', {}],
        ['text', '{"model": "mistral-7b"}', { 'content-type': 'text/plain' }],
        ['chunked', streamed('{"model": "mistral-7b"}'), { 'content-type': 'application/json' }],
        [
          'multipart',
          '--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nmistral-7b\r\n--b--\r\n',
          { 'content-type': 'multipart/form-data; boundary=b' },
        ],
      ];
      for (const [name, body, headers] of cases) {
        const id = `unread-${name}`;
        const res = await send('/v1/images/generations', body, { ...headers, 'x-request-id': id });
        expect(res.statusCode, name).toBe(403);
        const err = ((await res.body.json()) as { error: { type: string; code: string; message: string } })
          .error;
        expect(err.type).toBe('permission_error');
        expect(err.code).toBe('model_required');
        expect(err.message).toContain('ns/images');
        expect(err.message).toContain('Content-Length');
        expect(err.message).toContain('x-gpugate-model');
        expect(reached(images, id)).toHaveLength(0);
      }
      // The same unread body on a path where the chosen backend also serves a forbidden model.
      const mixed = await send('/v1/chat/completions', '{"model": "mistral-7b"}', {
        'x-request-id': 'unread-mixed',
      });
      expect(mixed.statusCode).toBe(403);
      expect(((await mixed.body.json()) as { error: { code: string } }).error.code).toBe('model_required');
      expect(reached(mistral, 'unread-mixed')).toHaveLength(0);
      // An unrestricted key is not affected.
      const free = await request(plane.url + '/v1/images/generations', {
        method: 'POST',
        body: '{"prompt": "a cat"}',
        headers: { authorization: `Bearer ${acme.secret}`, 'content-type': 'text/plain' },
      });
      expect(free.statusCode).toBe(200);
      await free.body.dump();
    });

    it('forwards an unread body without the header to a backend whose every model the key may use', async () => {
      // Only ns/llama (llama-3) routes /v1/completions: whatever the body names, llama-3 is all it serves.
      const res = await send('/v1/completions', streamed('{"model": "llama-3", "prompt": "hi"}'), {
        'x-request-id': 'unread-allowed',
      });
      expect(res.statusCode).toBe(200);
      expect(((await res.body.json()) as { upstream: string }).upstream).toBe('llama');
      expect(reached(llama, 'unread-allowed')).toHaveLength(1);
    });
  });

  it('rejects missing, malformed, mistyped, unknown, disabled and expired keys with 401 naming which', async () => {
    const cases: [string | null, string][] = [
      [null, 'missing_credentials'],
      ['sk-not-ours', 'invalid_api_key'],
      [acme.secret.slice(0, -1) + (acme.secret.endsWith('A') ? 'B' : 'A'), 'invalid_api_key'],
      [apiKey('x').secret, 'unknown_api_key'],
      [disabled.secret, 'key_disabled'],
      [expired.secret, 'key_expired'],
    ];
    for (const [key, code] of cases) {
      const res = await post('/v1/chat/completions', chat('llama-3'), key);
      expect(res.statusCode, code).toBe(401);
      const text = await res.body.text();
      expect(JSON.parse(text).error.code).toBe(code);
      if (key) expect(text).not.toContain(key);
    }
  });

  it('accepts the key in x-api-key and refuses a suspended tenant with 403', async () => {
    const ok = await post('/v1/chat/completions', chat('llama-3'), null, { 'x-api-key': acme.secret });
    expect(ok.statusCode).toBe(200);
    await ok.body.dump();
    const res = await post('/v1/chat/completions', chat('llama-3'), frozen.secret);
    expect(res.statusCode).toBe(403);
    expect(((await res.body.json()) as { error: { code: string } }).error.code).toBe('tenant_suspended');
  });

  it('serves a public route without credentials', async () => {
    const res = await request(plane.url + '/public/health');
    expect(res.statusCode).toBe(200);
    await res.body.dump();
  });

  it('answers 413 before forwarding a body over maxRequestBytes', async () => {
    const before = images.requests.length;
    const res = await request(plane.url + '/v1/images/generate', {
      method: 'POST',
      body: Buffer.alloc(5000, 1),
      headers: { 'content-type': 'application/octet-stream', authorization: `Bearer ${acme.secret}` },
    });
    expect(res.statusCode).toBe(413);
    expect(((await res.body.json()) as { error: { code: string } }).error.code).toBe('request_too_large');
    expect(images.requests.length).toBe(before);
  });

  it('lists the models the caller may use at GET /v1/models, OpenAI-shaped', async () => {
    const res = await request(plane.url + '/v1/models', {
      headers: { authorization: `Bearer ${restricted.secret}` },
    });
    expect(res.statusCode).toBe(200);
    const body = (await res.body.json()) as { object: string; data: { id: string; object: string }[] };
    expect(body.object).toBe('list');
    expect(body.data.map((m) => m.id)).toEqual(['llama-3']);
    expect(body.data[0]?.object).toBe('model');
  });

  it('refuses a request that already passed this gateway with 508', async () => {
    const res = await post('/v1/chat/completions', chat('llama-3'), acme.secret, {
      via: `1.1 other, 1.1 gpugate (${plane.instanceId})`,
    });
    expect(res.statusCode).toBe(508);
    expect(((await res.body.json()) as { error: { code: string } }).error.code).toBe('loop_detected');
  });

  it('emits one usage event per admitted request with tokens from the usage object', async () => {
    sink.events.length = 0;
    const res = await post('/v1/chat/completions', chat('llama-3'), acme.secret, {
      'x-request-id': 'usage-1',
    });
    await res.body.dump();
    await new Promise((r) => setTimeout(r, 20));
    const events = sink.events.filter((e) => e.requestId === 'usage-1');
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({
      tenant: 'acme',
      backend: 'ns/llama',
      model: 'llama-3',
      status: 200,
      inputTokens: 7,
      outputTokens: 3,
      tokensEstimated: false,
      credits: 1,
    });
  });
});
