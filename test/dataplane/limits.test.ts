// Rate limits through a real data plane: requests/min per key and per tenant divided by the replica
// count, X-RateLimit-*, concurrency, tokens/min corrected by the usage the backend reports, and
// bucket state that survives a snapshot swap.
import type { ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import type { ApiKey, Tenant } from '../../dataplane/config/snapshot.ts';
import {
  apiKey,
  backend,
  chat,
  snapshot,
  startPlane,
  startUpstream,
  tenant,
  until,
  type Upstream,
} from './harness.ts';

describe('rate limits per key and per tenant', () => {
  let plane: DataPlane;
  let up: Upstream;
  /** Total tokens the upstream reports per answer. */
  let reportedTokens = 10;
  /** While set, the upstream holds answers here instead of sending them. */
  let held: ServerResponse[] | null = null;
  const perKey = apiKey('keyed', { limits: { requestsPerMinute: 6 } });
  const shared1 = apiKey('shared');
  const shared2 = apiKey('shared');
  const conc = apiKey('conc');
  const tok = apiKey('tok');
  const tenants: Tenant[] = [
    tenant('keyed'),
    tenant('shared', { limits: { requestsPerMinute: 8 } }),
    tenant('conc', { limits: { concurrentRequests: 4 } }),
    tenant('tok', { limits: { tokensPerMinute: 2000 } }),
  ];
  const keys: ApiKey[] = [perKey.key, shared1.key, shared2.key, conc.key, tok.key];

  beforeAll(async () => {
    up = await startUpstream('up', (_req, res) => {
      if (held) {
        held.push(res);
        return;
      }
      const input = Math.floor(reportedTokens / 2);
      const payload = JSON.stringify({
        id: 'x',
        choices: [],
        usage: {
          prompt_tokens: input,
          completion_tokens: reportedTokens - input,
          total_tokens: reportedTokens,
        },
      });
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(payload),
      });
      res.end(payload);
    });
    plane = await startPlane();
    // Two live replicas: each enforces half of every limit.
    const r = plane.applySnapshot(
      snapshot({ backends: [backend('ns/llm', [up.url])], tenants, keys, settings: { replicas: 2 } }),
    );
    expect(r.accepted).toBe(true);
  });

  afterAll(async () => {
    await plane.close({ drainMs: 1000 });
    await up.close();
  });

  async function call(secret: string, body = chat('m')) {
    const res = await request(`${plane.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
      body,
    });
    const text = await res.body.text();
    return {
      status: res.statusCode,
      headers: res.headers,
      code: res.statusCode >= 400 ? (JSON.parse(text) as { error: { code: string } }).error.code : null,
    };
  }

  it('limits requests per key to its share of requests/min, with X-RateLimit headers and Retry-After on 429', async () => {
    const results = [];
    const started = performance.now();
    for (let i = 0; i < 4; i++) results.push(await call(perKey.secret));
    const elapsedMs = performance.now() - started;
    expect(results.map((r) => r.status)).toEqual([200, 200, 200, 429]);
    expect(results.slice(0, 3).map((r) => r.headers['x-ratelimit-limit'])).toEqual(['3', '3', '3']);
    expect(results.slice(0, 3).map((r) => r.headers['x-ratelimit-remaining'])).toEqual(['2', '1', '0']);
    expect(results[0]?.headers['x-ratelimit-scope']).toBe('key; requests');
    const refused = results[3];
    expect(refused?.code).toBe('rate_limit_exceeded');
    // 3 per minute per replica: one request back every 20 s, less what refilled since the first
    // request took the full bucket (19-20 s on a fast machine; the bound follows a slow one).
    expect(Number(refused?.headers['retry-after'])).toBeGreaterThanOrEqual(
      Math.max(1, Math.ceil((20_000 - elapsedMs) / 1000)),
    );
    expect(Number(refused?.headers['retry-after'])).toBeLessThanOrEqual(20);
    expect(refused?.headers['x-ratelimit-remaining']).toBe('0');
    expect(Number(refused?.headers['x-ratelimit-reset'])).toBeGreaterThan(0);
  });

  it('limits a tenant across all its keys to its share', async () => {
    const statuses = [];
    for (let i = 0; i < 6; i++)
      statuses.push((await call(i % 2 === 0 ? shared1.secret : shared2.secret)).status);
    expect(statuses).toEqual([200, 200, 200, 200, 429, 429]);
  });

  it('keeps bucket state across a snapshot swap for unchanged keys', async () => {
    expect((await call(perKey.secret)).status).toBe(429);
    const r = plane.applySnapshot(
      snapshot({
        backends: [backend('ns/llm', [up.url])],
        tenants: [...tenants, tenant('newcomer')],
        keys: [...keys, apiKey('newcomer').key],
        settings: { replicas: 2 },
      }),
    );
    expect(r).toMatchObject({ accepted: true, changed: true });
    expect((await call(perKey.secret)).status).toBe(429);
  });

  it('refuses requests beyond the concurrent limit share and admits again when one ends', async () => {
    held = [];
    const pending = [call(conc.secret), call(conc.secret)];
    await until(() => (held as ServerResponse[]).length === 2);
    const third = await call(conc.secret);
    expect(third.status).toBe(429);
    expect(third.code).toBe('rate_limit_exceeded');
    const first = (held as ServerResponse[]).shift() as ServerResponse;
    first.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    await until(() => (held as ServerResponse[]).length === 1);
    const fourth = call(conc.secret);
    await until(() => (held as ServerResponse[]).length === 2);
    for (const res of held as ServerResponse[])
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    held = null;
    expect((await Promise.all([...pending, fourth])).map((r) => r.status)).toEqual([200, 200, 200]);
  });

  it('charges tokens/min an estimate from max_tokens and the prompt, then corrects it by the reported usage', async () => {
    // Share per replica: 1000 tokens/min. Each request is estimated at ~400 + prompt/4 tokens.
    reportedTokens = 10;
    const body = chat('m', { max_tokens: 400 });
    const cheap = [];
    for (let i = 0; i < 6; i++) cheap.push((await call(tok.secret, body)).status);
    // Without the correction the third request would be refused (3 × ~420 > 1000).
    expect(cheap).toEqual([200, 200, 200, 200, 200, 200]);
    reportedTokens = 900;
    expect((await call(tok.secret, body)).status).toBe(200);
    const refused = await call(tok.secret, body);
    expect(refused.status).toBe(429);
    expect(refused.code).toBe('rate_limit_exceeded');
    expect(refused.headers['x-ratelimit-scope']).toBe('tenant; tokens');
    expect(refused.headers['x-ratelimit-limit']).toBe('1000');
  });
});
