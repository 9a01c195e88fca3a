// Identity through a real data plane and real upstream sockets: every 401/403 with its JSON error,
// CIDRs (IPv4 on 127.0.0.1, IPv6 on ::1 and behind a trusted proxy), identity headers, the client's
// key never upstream, public routes, brute-force throttling and CORS preflight.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent, request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import type { Cors } from '../../dataplane/config/snapshot.ts';
import {
  apiKey,
  backend,
  chat,
  snapshot,
  startPlane,
  startUpstream,
  tenant,
  type Upstream,
} from './harness.ts';

interface ErrorJson {
  error: { type: string; code: string; message: string; request_id: string };
}

const cors: Cors = {
  allowedOrigins: ['https://app.example.com'],
  allowedMethods: ['GET', 'POST'],
  allowedHeaders: ['authorization', 'content-type', 'x-api-key'],
  exposedHeaders: [],
  allowCredentials: false,
  maxAgeSeconds: 600,
};

describe('identity and admission: API keys, CIDRs, headers, public routes, CORS', () => {
  let plane: DataPlane;
  let up: Upstream;
  const acme = apiKey('acme');
  const disabled = apiKey('acme', { disabled: true });
  const expired = apiKey('acme', { expiresAt: '2020-01-01T00:00:00Z' });
  const frozen = apiKey('frozen');
  const onlyLlama = apiKey('acme', { allowedModels: ['llama-3'] });
  const office = apiKey('acme', { allowedCIDRs: ['10.0.0.0/8'] });
  const loopback4 = apiKey('acme', { allowedCIDRs: ['127.0.0.0/8'] });
  const loopback6 = apiKey('acme', { allowedCIDRs: ['::1/128'] });
  const v6net = apiKey('acme', { allowedCIDRs: ['2001:db8::/32'] });
  const narrow = apiKey('narrow');

  beforeAll(async () => {
    up = await startUpstream('up');
    plane = await startPlane({ listen: { host: '::', port: 0 } });
    const result = plane.applySnapshot(
      snapshot({
        backends: [
          backend('ns/llm', [up.url], {
            models: ['llama-3', 'mistral-7b'],
            routes: [
              { pathPrefix: '/v1', methods: [], public: false },
              { pathPrefix: '/callback', methods: ['POST', 'GET'], public: true },
            ],
            upstreamAuth: { header: 'Authorization', value: 'Bearer backend-own-secret' },
          }),
          backend('ns/other', [up.url], { models: ['other-model'] }),
        ],
        tenants: [
          tenant('acme'),
          tenant('frozen', { suspended: true }),
          tenant('narrow', { allowedBackends: ['ns/llm'] }),
        ],
        keys: [
          acme.key,
          disabled.key,
          expired.key,
          frozen.key,
          onlyLlama.key,
          office.key,
          loopback4.key,
          loopback6.key,
          v6net.key,
          narrow.key,
        ],
        settings: {
          cors,
          trustedProxies: ['127.0.0.2/32'],
          clientLimits: { publicRequestsPerMinute: 5, authFailuresPerMinute: 6 },
        },
      }),
    );
    expect(result.accepted).toBe(true);
  });

  afterAll(async () => {
    await plane.close({ drainMs: 1000 });
    await up.close();
  });

  const port = (): string => new URL(plane.url).port;
  // Loopback has the whole 127/8 (and ::1): a client picks its source address with localAddress.
  const agents = new Map<string, Agent>();
  function from(source: string): Agent {
    let a = agents.get(source);
    if (!a) {
      a = new Agent({ localAddress: source });
      agents.set(source, a);
    }
    return a;
  }
  afterAll(async () => {
    await Promise.all([...agents.values()].map((a) => a.close()));
  });

  async function post(
    key: string | null,
    body = chat('llama-3'),
    headers: Record<string, string> = {},
    source = '127.0.0.1',
    path = '/v1/chat/completions',
  ) {
    const h: Record<string, string> = { 'content-type': 'application/json', ...headers };
    if (key !== null) h.authorization = `Bearer ${key}`;
    const host = source.includes(':') ? '[::1]' : '127.0.0.1';
    return request(`http://${host}:${port()}${path}`, {
      method: 'POST',
      headers: h,
      body,
      dispatcher: from(source),
    });
  }

  async function errorOf(res: Awaited<ReturnType<typeof post>>): Promise<ErrorJson['error']> {
    const text = await res.body.text();
    return (JSON.parse(text) as ErrorJson).error;
  }

  it('answers 401 for missing, malformed, mistyped, unknown, disabled and expired keys, naming which, never echoing the key', async () => {
    const cases: [string | null, Record<string, string>, string][] = [
      [null, {}, 'missing_credentials'],
      [null, { authorization: 'Basic dXNlcjpwYXNz' }, 'invalid_api_key'],
      ['sk-not-ours', {}, 'invalid_api_key'],
      [acme.secret.slice(0, -1) + (acme.secret.endsWith('A') ? 'B' : 'A'), {}, 'invalid_api_key'],
      [apiKey('x').secret, {}, 'unknown_api_key'],
      [disabled.secret, {}, 'key_disabled'],
      [expired.secret, {}, 'key_expired'],
    ];
    // Each failure from 127.0.0.1 counts toward brute-force throttling; use distinct source addresses.
    let i = 10;
    for (const [key, headers, code] of cases) {
      const res = await post(key, chat('llama-3'), headers, `127.0.1.${i++}`);
      expect(res.statusCode, code).toBe(401);
      expect(res.headers['www-authenticate']).toBe('Bearer');
      const err = await errorOf(res);
      expect(err.code).toBe(code);
      expect(err.type).toBe('authentication_error');
      expect(err.request_id).toBe(res.headers['x-request-id']);
      if (key) expect(err.message).not.toContain(key);
    }
    expect(up.requests.length).toBe(0);
  });

  it('tells a mistyped key by its checksum without looking it up', async () => {
    const typo = acme.secret.slice(0, 10) + (acme.secret[10] === 'x' ? 'y' : 'x') + acme.secret.slice(11);
    const res = await post(typo, chat('llama-3'), {}, '127.0.2.1');
    const err = await errorOf(res);
    expect(res.statusCode).toBe(401);
    expect(err.code).toBe('invalid_api_key');
    expect(err.message).toMatch(/checksum/);
  });

  it('answers 403 for a suspended tenant, a model the key may not use and a backend the tenant may not use', async () => {
    const suspended = await post(frozen.secret);
    expect(suspended.statusCode).toBe(403);
    expect((await errorOf(suspended)).code).toBe('tenant_suspended');
    const model = await post(onlyLlama.secret, chat('mistral-7b'));
    expect(model.statusCode).toBe(403);
    expect((await errorOf(model)).code).toBe('model_not_allowed');
    const other = await post(narrow.secret, chat('other-model'));
    expect(other.statusCode).toBe(403);
    const err = await errorOf(other);
    expect(err.code).toBe('backend_not_allowed');
    expect(err.type).toBe('permission_error');
  });

  it('admits a key only from its allowedCIDRs, over IPv4 and IPv6', async () => {
    const outside = await post(office.secret);
    expect(outside.statusCode).toBe(403);
    const err = await errorOf(outside);
    expect(err.code).toBe('ip_not_allowed');
    expect(err.message).toContain('127.0.0.1');
    const v4 = await post(loopback4.secret);
    expect(v4.statusCode).toBe(200);
    await v4.body.dump();
    const v4on6 = await post(loopback6.secret);
    expect(v4on6.statusCode).toBe(403);
    await v4on6.body.dump();
    const v6 = await post(loopback6.secret, chat('llama-3'), {}, '::1');
    expect(v6.statusCode).toBe(200);
    await v6.body.dump();
    const v4keyOn6 = await post(loopback4.secret, chat('llama-3'), {}, '::1');
    expect(v4keyOn6.statusCode).toBe(403);
    await v4keyOn6.body.dump();
  });

  it('believes X-Forwarded-For only from a trusted proxy', async () => {
    // 127.0.0.2 is a trusted proxy: the client is the address it names.
    const viaProxy = await post(
      v6net.secret,
      chat('llama-3'),
      { 'x-forwarded-for': '2001:db8::7' },
      '127.0.0.2',
    );
    expect(viaProxy.statusCode).toBe(200);
    await viaProxy.body.dump();
    // 127.0.0.1 is not: the same header changes nothing.
    const spoofed = await post(v6net.secret, chat('llama-3'), { 'x-forwarded-for': '2001:db8::7' });
    expect(spoofed.statusCode).toBe(403);
    await spoofed.body.dump();
  });

  it('never forwards spoofed identity headers or the client key; sets identity from the principal and adds the backend credential', async () => {
    const before = up.requests.length;
    const res = await post(acme.secret, chat('llama-3'), {
      'x-gpugate-tenant': 'someone-else',
      'x-gpugate-anything': 'spoof',
      'x-user-id': 'admin',
      'x-username': 'root',
      'x-forwarded-user': 'root',
      'x-auth-request-email': 'root@example.com',
      'x-remote-user': 'root',
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    const xKey = await post(null, chat('llama-3'), { 'x-api-key': acme.secret, 'x-user-id': 'admin' });
    expect(xKey.statusCode).toBe(200);
    await xKey.body.dump();
    const seen = up.requests.slice(before);
    expect(seen.length).toBe(2);
    for (const r of seen) {
      expect(r.headers['x-gpugate-tenant']).toBe('acme');
      expect(r.headers['x-gpugate-anything']).toBeUndefined();
      expect(r.headers['x-user-id']).toBeUndefined();
      expect(r.headers['x-username']).toBeUndefined();
      for (const h of ['x-forwarded-user', 'x-auth-request-email', 'x-remote-user'])
        expect(r.headers[h]).toBeUndefined();
      expect(r.headers['x-api-key']).toBeUndefined();
      expect(r.headers.authorization).toBe('Bearer backend-own-secret');
      expect(JSON.stringify(r.headers)).not.toContain(acme.secret);
      expect(r.body).not.toContain(acme.secret);
    }
  });

  it('serves a public route without credentials, limited per client address', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 7; i++) {
      const res = await post(null, '{}', {}, '127.0.0.3', '/callback/job-done');
      statuses.push(res.statusCode);
      if (res.statusCode === 429) {
        expect(res.headers['retry-after']).toBeDefined();
        expect((JSON.parse(await res.body.text()) as ErrorJson).error.code).toBe('rate_limit_exceeded');
      } else await res.body.dump();
    }
    expect(statuses.slice(0, 5)).toEqual([200, 200, 200, 200, 200]);
    expect(statuses.slice(5)).toEqual([429, 429]);
    // Another address has its own allowance.
    const other = await post(null, '{}', {}, '127.0.0.4', '/callback/job-done');
    expect(other.statusCode).toBe(200);
    await other.body.dump();
  });

  it('throttles an address after repeated failed authentications, even for a valid key, and not other addresses', async () => {
    const host = '127.0.0.5';
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) {
      const res = await post(apiKey('nobody').secret, chat('llama-3'), {}, host);
      statuses.push(res.statusCode);
      await res.body.dump();
    }
    expect(statuses.slice(0, 6)).toEqual([401, 401, 401, 401, 401, 401]);
    expect(statuses.slice(6)).toEqual([429, 429]);
    const valid = await post(acme.secret, chat('llama-3'), {}, host);
    expect(valid.statusCode).toBe(429);
    expect(Number(valid.headers['retry-after'])).toBeGreaterThan(0);
    expect((await errorOf(valid)).code).toBe('rate_limit_exceeded');
    const elsewhere = await post(acme.secret, chat('llama-3'), {}, '127.0.0.6');
    expect(elsewhere.statusCode).toBe(200);
    await elsewhere.body.dump();
  });

  it('answers a CORS preflight itself, without credentials, never forwarding it', async () => {
    const before = up.requests.length;
    const res = await request(`${plane.url}/v1/chat/completions`, {
      method: 'OPTIONS',
      headers: {
        origin: 'https://app.example.com',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'Authorization, Content-Type',
      },
    });
    expect(res.statusCode).toBe(204);
    expect(res.headers['access-control-allow-origin']).toBe('https://app.example.com');
    expect(res.headers['access-control-allow-methods']).toContain('POST');
    expect(String(res.headers['access-control-allow-headers'])).toContain('authorization');
    expect(res.headers['access-control-max-age']).toBe('600');
    expect(String(res.headers.vary)).toContain('Origin');
    await res.body.dump();

    const badOrigin = await request(`${plane.url}/v1/chat/completions`, {
      method: 'OPTIONS',
      headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' },
    });
    expect(badOrigin.statusCode).toBe(403);
    expect(badOrigin.headers['access-control-allow-origin']).toBeUndefined();
    expect((JSON.parse(await badOrigin.body.text()) as ErrorJson).error.code).toBe('cors_preflight_refused');
    const badMethod = await request(`${plane.url}/v1/chat/completions`, {
      method: 'OPTIONS',
      headers: { origin: 'https://app.example.com', 'access-control-request-method': 'DELETE' },
    });
    expect(badMethod.statusCode).toBe(403);
    await badMethod.body.dump();
    expect(up.requests.length).toBe(before);

    const actual = await post(acme.secret, chat('llama-3'), { origin: 'https://app.example.com' });
    expect(actual.statusCode).toBe(200);
    expect(actual.headers['access-control-allow-origin']).toBe('https://app.example.com');
    expect(String(actual.headers['access-control-expose-headers'])).toContain('x-request-id');
    await actual.body.dump();
    const refusedCors = await post(null, chat('llama-3'), { origin: 'https://app.example.com' }, '127.0.3.1');
    expect(refusedCors.statusCode).toBe(401);
    expect(refusedCors.headers['access-control-allow-origin']).toBe('https://app.example.com');
    await refusedCors.body.dump();
  });
});
