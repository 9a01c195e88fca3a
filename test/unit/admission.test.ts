// Units of the admission step: token buckets, per-replica shares, CIDRs, CORS preflight rules, and a
// property over credentials: no input throws, answers 5xx or authenticates without a valid credential.
import type { IncomingMessage } from 'node:http';
import fc from 'fast-check';
import { SignJWT } from 'jose';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { Admission } from '../../dataplane/admission/admission.ts';
import { addressIn, compileCidrs, normalizeAddress } from '../../dataplane/auth/cidr.ts';
import type { Snapshot } from '../../dataplane/config/snapshot.ts';
import { answerPreflight, compileCors } from '../../dataplane/http/cors.ts';
import { TokenBucket } from '../../dataplane/limits/bucket.ts';
import { replicaLimits } from '../../dataplane/limits/limiter.ts';
import { apiKey, tenant } from '../dataplane/harness.ts';

describe('token bucket', () => {
  it('refills continuously, waits exactly, and lets a request larger than the bucket through only when full', () => {
    const b = new TokenBucket(60, 0); // one per second
    expect(b.waitFor(1, 0)).toBe(0);
    b.take(60, 0);
    expect(b.waitFor(1, 0)).toBe(1000);
    expect(b.remaining(500)).toBe(0);
    expect(b.waitFor(1, 1000)).toBe(0);
    expect(b.waitFor(100, 1000)).toBe(59_000); // needs a full bucket, not 100 tokens
    b.take(100, 60_000); // full at 60 s, then 40 into debt
    expect(b.waitFor(1, 60_000)).toBe(41_000);
    b.adjust(90, 60_000); // the estimate was 90 too high
    expect(b.remaining(60_000)).toBe(50);
  });

  it('keeps what was spent when resized, never more than the new capacity', () => {
    const b = new TokenBucket(100, 0);
    b.take(30, 0);
    b.resize(50, 0);
    expect(b.remaining(0)).toBe(50);
    b.resize(200, 0);
    expect(b.remaining(0)).toBe(50);
  });

  it('divides limits by the replica count: rates may be fractional, concurrency rounds down, at least one', () => {
    expect(replicaLimits({ requestsPerMinute: 10, tokensPerMinute: 1000, concurrentRequests: 5 }, 4)).toEqual(
      {
        requestsPerMinute: 2.5,
        tokensPerMinute: 250,
        concurrentRequests: 1,
      },
    );
    expect(replicaLimits({ requestsPerMinute: 1, concurrentRequests: 1 }, 3)).toEqual({
      requestsPerMinute: 1,
      tokensPerMinute: 0,
      concurrentRequests: 1,
    });
    expect(replicaLimits({ requestsPerMinute: 0 }, 1).requestsPerMinute).toBe(0);
  });
});

describe('CIDRs', () => {
  it('matches IPv4, IPv6 and IPv4-mapped IPv6 and refuses garbage at compile time', () => {
    const r = compileCidrs(['10.0.0.0/8', '2001:db8::/32', '192.0.2.7']);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(addressIn(r.list, '10.1.2.3')).toBe(true);
    expect(addressIn(r.list, normalizeAddress('::ffff:10.1.2.3'))).toBe(true);
    expect(addressIn(r.list, '11.0.0.1')).toBe(false);
    expect(addressIn(r.list, '2001:db8:1::1')).toBe(true);
    expect(addressIn(r.list, '2001:db9::1')).toBe(false);
    expect(addressIn(r.list, '192.0.2.7')).toBe(true);
    expect(addressIn(r.list, '192.0.2.8')).toBe(false);
    expect(addressIn(r.list, 'not-an-ip')).toBe(false);
    for (const bad of ['10.0.0.0/33', 'fe80::/129', 'ten.0.0.0/8', '10.0.0.0/', '10.0.0.0/x'])
      expect(compileCidrs([bad]).ok, bad).toBe(false);
  });
});

describe('CORS preflight', () => {
  const c = compileCors({
    allowedOrigins: ['https://a.example'],
    allowedMethods: ['POST'],
    allowedHeaders: ['Authorization', 'Content-Type'],
    exposedHeaders: ['x-custom'],
    allowCredentials: true,
    maxAgeSeconds: 60,
  });
  const pre = (headers: Record<string, string>) =>
    answerPreflight(c!, { method: 'OPTIONS', headers } as unknown as IncomingMessage);

  it('echoes an allowed origin (never * with credentials) and lists Authorization explicitly', () => {
    const a = pre({
      origin: 'https://a.example',
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization,content-type',
    });
    expect(a.status).toBe(204);
    if (a.status !== 204) return;
    expect(a.headers['access-control-allow-origin']).toBe('https://a.example');
    expect(a.headers['access-control-allow-credentials']).toBe('true');
    expect(a.headers['access-control-allow-headers']).toBe('authorization, content-type');
  });

  it('refuses other origins, methods and headers', () => {
    expect(pre({ origin: 'https://b.example', 'access-control-request-method': 'POST' }).status).toBe(403);
    expect(pre({ origin: 'https://a.example', 'access-control-request-method': 'PUT' }).status).toBe(403);
    expect(
      pre({
        origin: 'https://a.example',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'x-gpugate-tenant',
      }).status,
    ).toBe(403);
  });

  it('is off without origins', () => {
    expect(compileCors(undefined)).toBeNull();
  });
});

describe('credential parsing (property)', () => {
  const HS_SECRET = 'unit-test-hs-secret-0123456789abcdef';
  const t = tenant('t', {
    jwt: {
      issuer: 'https://iss',
      audiences: ['aud'],
      hsSecret: HS_SECRET,
      subjectClaim: 'sub',
      userNameClaim: 'name',
    },
  });
  const { secret, key } = apiKey('t', { id: 't/k' });
  const snap = {
    settings: {
      replicas: 1,
      exposeBackendHeader: true,
      maxJsonPeekBytes: 1024,
      clientLimits: { publicRequestsPerMinute: 0, authFailuresPerMinute: 0 },
    },
    backends: [],
    tenants: [t],
    keys: [key],
  } as unknown as Snapshot;
  const admission = new Admission({ logger: pino({ level: 'silent' }) }).compile(snap);
  const req = (headers: Record<string, string>) =>
    ({ headers, socket: { remoteAddress: '127.0.0.1' } }) as unknown as IncomingMessage;

  it('authenticates the valid key and a valid token in both headers', async () => {
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer('https://iss')
      .setAudience('aud')
      .setSubject('u')
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(HS_SECRET));
    const cases: Record<string, string>[] = [
      { authorization: `Bearer ${secret}` },
      { 'x-api-key': secret },
      { authorization: `BEARER  ${token}` },
      { 'x-api-key': token },
    ];
    for (const h of cases) {
      expect((await admission.authenticate(req(h))).ok).toBe(true);
    }
  });

  it('never throws, never answers 5xx, never authenticates without a valid credential, never echoes it', async () => {
    const part = fc.oneof(
      fc.string({ maxLength: 60 }),
      fc.constantFrom('gpg_', 'Bearer ', 'bearer ', 'eyJ', '.', secret.slice(0, 20), 'ey.ey.', ' '),
      fc.base64String({ maxLength: 60 }).map((s) => s.replace(/[+/=]/g, '_')),
    );
    const credential = fc.array(part, { maxLength: 6 }).map((a) => a.join(''));
    // JWT-shaped strings: three base64url segments built from JSON headers/claims an attacker chooses.
    const jwtish = fc
      .tuple(
        fc.record({
          alg: fc.constantFrom('none', 'HS256', 'RS256', 'ES256', 'HS512', ''),
          kid: fc.string({ maxLength: 8 }),
        }),
        fc.record({
          iss: fc.constantFrom('https://iss', 'https://other', ''),
          aud: fc.constantFrom('aud', 'x'),
          sub: fc.string({ maxLength: 8 }),
          exp: fc.integer(),
        }),
        fc.string({ maxLength: 40 }),
      )
      .map(
        ([h, p, sig]) =>
          `${Buffer.from(JSON.stringify(h)).toString('base64url')}.${Buffer.from(JSON.stringify(p)).toString('base64url')}.${Buffer.from(sig).toString('base64url')}`,
      );
    await fc.assert(
      fc.asyncProperty(
        fc.option(
          fc.oneof(
            credential,
            jwtish.map((j) => `Bearer ${j}`),
          ),
        ),
        fc.option(fc.oneof(credential, jwtish)),
        async (auth, apiKey) => {
          const headers: Record<string, string> = {};
          if (auth !== null) headers.authorization = auth;
          if (apiKey !== null) headers['x-api-key'] = apiKey;
          const r = await admission.authenticate(req(headers));
          const presented = [auth, apiKey].some(
            (v) => v !== null && v.replace(/^bearer +/i, '').trim() === secret,
          );
          if (presented) return;
          expect(r.ok).toBe(false);
          if (r.ok) return;
          expect(r.error.status).toBeGreaterThanOrEqual(400);
          expect(r.error.status).toBeLessThan(500);
          for (const v of [auth, apiKey])
            if (v && v.trim().length > 8) expect(r.error.message).not.toContain(v.trim());
        },
      ),
      { numRuns: 3000 },
    );
  });

  it('on one keep-alive connection, only the exact key authenticates, and a new snapshot decides again', () => {
    const shared = new Admission({ logger: pino({ level: 'silent' }) });
    const socket = { remoteAddress: '127.0.0.1' };
    const on = (compiled: ReturnType<Admission['compile']>, credential: string) =>
      compiled.authenticate({
        headers: { authorization: `Bearer ${credential}` },
        socket,
      } as unknown as IncomingMessage) as { ok: boolean; error?: { code: string } };
    const first = shared.compile(snap);
    const other = apiKey('t', { id: 't/other' }).secret; // well formed, not in the snapshot
    const typo = `${secret.slice(0, -1)}${secret.endsWith('A') ? 'B' : 'A'}`;
    expect(on(first, secret).ok).toBe(true);
    expect(on(first, other).error?.code).toBe('unknown_api_key');
    expect(on(first, secret).ok).toBe(true);
    expect(on(first, typo).error?.code).toBe('invalid_api_key');
    expect(on(first, secret).ok).toBe(true);
    // The key disabled, then removed, in later snapshots: refused on the same connection.
    const disabled = shared.compile({ ...snap, keys: [{ ...key, disabled: true }] } as Snapshot);
    expect(on(disabled, secret).error?.code).toBe('key_disabled');
    const removed = shared.compile({ ...snap, keys: [] } as Snapshot);
    expect(on(removed, secret).error?.code).toBe('unknown_api_key');
    expect(on(first, secret).ok).toBe(true);
  });
});
