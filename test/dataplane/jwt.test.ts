// JWT identity per tenant against a real JWKS server (node:http on loopback): rotation to a new kid
// with a bounded refetch rate, expiry with clock skew, audience, alg none and HS/RS confusion.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, UnsecuredJWT, type JWK } from 'jose';
import type { DataPlane } from '../../dataplane/server.ts';
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

const ISSUER = 'https://idp.test/realms/acme';
const HS_ISSUER = 'https://hs.test';
const HS_SECRET = 'a-shared-secret-of-reasonable-length-0123456789';
const COOLDOWN_MS = 30_000;

type KeyPair = Awaited<ReturnType<typeof generateKeyPair>>;

describe('JWT identity per tenant', () => {
  let plane: DataPlane;
  let up: Upstream;
  let jwksServer: Server;
  let jwksUrl = '';
  let jwksFetches = 0;
  /** The key sets' clock (ms): moved only by the tests. */
  let clock = 1_000_000;
  let published: JWK[] = [];
  let k1: KeyPair;
  let k2: KeyPair;

  async function publicJwk(k: KeyPair, kid: string): Promise<JWK> {
    return { ...(await exportJWK(k.publicKey)), kid, alg: 'RS256', use: 'sig' };
  }

  beforeAll(async () => {
    k1 = await generateKeyPair('RS256', { extractable: true });
    k2 = await generateKeyPair('RS256', { extractable: true });
    published = [await publicJwk(k1, 'kid-1')];
    jwksServer = createServer((req, res) => {
      if (req.url === '/broken.json') {
        res.writeHead(500).end('down');
        return;
      }
      jwksFetches++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: published }));
    });
    await new Promise<void>((r) => jwksServer.listen(0, '127.0.0.1', () => r()));
    jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json`;
    up = await startUpstream('up');
    plane = await startPlane({ jwks: { cooldownMs: COOLDOWN_MS, now: () => clock } });
    const result = plane.applySnapshot(
      snapshot({
        backends: [backend('ns/llm', [up.url])],
        tenants: [
          tenant('acme', {
            jwt: {
              issuer: ISSUER,
              audiences: ['gpugate'],
              jwksUrl,
              subjectClaim: 'sub',
              userNameClaim: 'preferred_username',
            },
          }),
          tenant('idp-down', {
            jwt: {
              issuer: 'https://down.test',
              audiences: [],
              jwksUrl: jwksUrl.replace('/jwks.json', '/broken.json'),
              subjectClaim: 'sub',
              userNameClaim: 'name',
            },
          }),
          tenant('idp-gone', {
            jwt: {
              issuer: 'https://gone.test',
              audiences: [],
              jwksUrl: 'http://127.0.0.1:1/jwks.json',
              subjectClaim: 'sub',
              userNameClaim: 'name',
            },
          }),
          tenant('hs', {
            jwt: {
              issuer: HS_ISSUER,
              audiences: [],
              hsSecret: HS_SECRET,
              subjectClaim: 'uid',
              userNameClaim: 'name',
            },
          }),
        ],
        keys: [apiKey('acme').key],
        settings: { clientLimits: { publicRequestsPerMinute: 0, authFailuresPerMinute: 0 } },
      }),
    );
    expect(result.accepted).toBe(true);
  });

  afterAll(async () => {
    await plane.close({ drainMs: 1000 });
    await up.close();
    jwksServer.closeAllConnections();
    await new Promise<void>((r) => jwksServer.close(() => r()));
  });

  function rs(k: KeyPair, kid: string, claims: Record<string, unknown> = {}, exp: string | number = '5m') {
    return new SignJWT({ preferred_username: 'ada', ...claims })
      .setProtectedHeader({ alg: 'RS256', kid })
      .setIssuer(ISSUER)
      .setAudience('gpugate')
      .setSubject('user-42')
      .setIssuedAt()
      .setExpirationTime(exp)
      .sign(k.privateKey);
  }

  async function call(token: string, headers: Record<string, string> = {}) {
    const res = await request(`${plane.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, ...headers },
      body: chat('m'),
    });
    const text = await res.body.text();
    return {
      status: res.statusCode,
      code: res.statusCode >= 400 ? (JSON.parse(text) as { error: { code: string } }).error.code : null,
      text,
    };
  }

  it('admits a token of the tenant its issuer and audience name, and passes its subject and user name upstream, never the token', async () => {
    const token = await rs(k1, 'kid-1');
    const before = up.requests.length;
    const r = await call(token, {
      'x-user-id': 'spoofed',
      'x-username': 'spoofed',
      'x-gpugate-tenant': 'hs',
    });
    expect(r.status).toBe(200);
    const seen = up.requests[before];
    expect(seen?.headers['x-gpugate-tenant']).toBe('acme');
    expect(seen?.headers['x-user-id']).toBe('user-42');
    expect(seen?.headers['x-username']).toBe('ada');
    expect(seen?.headers.authorization).toBeUndefined();
    expect(JSON.stringify(seen?.headers)).not.toContain(token);
  });

  it('follows a key rotation to a new kid after the refetch cooldown, and bounds refetches for unknown kids', async () => {
    // The key sets run on the test's clock: time passes only when the test moves it, however slowly the
    // machine runs, so fetch counts are exact.
    published = [await publicJwk(k1, 'kid-1'), await publicJwk(k2, 'kid-2')];
    const fetchesBefore = jwksFetches;
    // kid-2 is unknown to the cached set; the last fetch is younger than the cooldown: no refetch.
    clock += COOLDOWN_MS - 1;
    expect(await call(await rs(k2, 'kid-2'))).toMatchObject({ status: 401, code: 'invalid_token' });
    expect(jwksFetches).toBe(fetchesBefore);
    // Once the cooldown has passed, the unknown kid refetches the set once and verifies.
    clock += 1;
    expect((await call(await rs(k2, 'kid-2'))).status).toBe(200);
    expect(jwksFetches).toBe(fetchesBefore + 1);
    // Old key retired: tokens signed with it stop verifying once the set is refetched.
    published = [await publicJwk(k2, 'kid-2')];
    // A flood of unknown kids within one cooldown costs no fetch at all.
    const flood = async () => {
      const answers = await Promise.all(
        Array.from({ length: 30 }, async (_, i) => call(await rs(k1, `unknown-${i}`))),
      );
      for (const r of answers) expect(r).toMatchObject({ status: 401, code: 'invalid_token' });
    };
    clock += COOLDOWN_MS - 1;
    await flood();
    expect(jwksFetches).toBe(fetchesBefore + 1);
    // After the cooldown, a flood costs exactly one fetch (concurrent misses share it, later ones are
    // within the new cooldown); that fetch retires kid-1.
    clock += 1;
    await flood();
    expect(jwksFetches).toBe(fetchesBefore + 2);
    expect(await call(await rs(k1, 'kid-1'))).toMatchObject({ status: 401, code: 'invalid_token' });
    expect((await call(await rs(k2, 'kid-2'))).status).toBe(200);
    expect(jwksFetches).toBe(fetchesBefore + 2);
  });

  it('answers 503 jwks_unavailable when the key set answers other than 200 or cannot be reached', async () => {
    for (const issuer of ['https://down.test', 'https://gone.test']) {
      const token = await new SignJWT({})
        .setProtectedHeader({ alg: 'RS256', kid: 'kid-1' })
        .setIssuer(issuer)
        .setSubject('u')
        .setExpirationTime('5m')
        .sign(k1.privateKey);
      expect(await call(token), issuer).toMatchObject({ status: 503, code: 'jwks_unavailable' });
    }
  });

  it('refuses an expired token beyond the clock skew, accepts one within it, and refuses a token not yet valid', async () => {
    const now = Math.floor(Date.now() / 1000);
    const longExpired = await call(await rs(k2, 'kid-2', {}, now - 120));
    expect(longExpired.status).toBe(401);
    expect(longExpired.code).toBe('token_expired');
    const justExpired = await call(await rs(k2, 'kid-2', {}, now - 5));
    expect(justExpired.status).toBe(200);
    const notYet = await call(await rs(k2, 'kid-2', { nbf: now + 600 }));
    expect(notYet.status).toBe(401);
    expect(notYet.code).toBe('invalid_token');
  });

  it('refuses a wrong audience, an unknown issuer, a token without exp and a missing subject', async () => {
    const wrongAud = await new SignJWT({})
      .setProtectedHeader({ alg: 'RS256', kid: 'kid-2' })
      .setIssuer(ISSUER)
      .setAudience('someone-else')
      .setSubject('u')
      .setExpirationTime('5m')
      .sign(k2.privateKey);
    expect(await call(wrongAud)).toMatchObject({ status: 401, code: 'invalid_token' });
    const otherIssuer = await new SignJWT({})
      .setProtectedHeader({ alg: 'RS256', kid: 'kid-2' })
      .setIssuer('https://evil.test')
      .setAudience('gpugate')
      .setSubject('u')
      .setExpirationTime('5m')
      .sign(k2.privateKey);
    expect(await call(otherIssuer)).toMatchObject({ status: 401, code: 'invalid_token' });
    const noExp = await new SignJWT({})
      .setProtectedHeader({ alg: 'RS256', kid: 'kid-2' })
      .setIssuer(ISSUER)
      .setAudience('gpugate')
      .setSubject('u')
      .sign(k2.privateKey);
    expect(await call(noExp)).toMatchObject({ status: 401, code: 'invalid_token' });
    const noSub = await new SignJWT({})
      .setProtectedHeader({ alg: 'RS256', kid: 'kid-2' })
      .setIssuer(ISSUER)
      .setAudience('gpugate')
      .setExpirationTime('5m')
      .sign(k2.privateKey);
    expect(await call(noSub)).toMatchObject({ status: 401, code: 'invalid_token' });
  });

  it('refuses alg none', async () => {
    const none = new UnsecuredJWT({ sub: 'user-42' })
      .setIssuer(ISSUER)
      .setAudience('gpugate')
      .setExpirationTime('5m')
      .encode();
    expect(await call(none)).toMatchObject({ status: 401, code: 'invalid_token' });
    const noneHs = new UnsecuredJWT({ uid: 'x' }).setIssuer(HS_ISSUER).setExpirationTime('5m').encode();
    expect(await call(noneHs)).toMatchObject({ status: 401, code: 'invalid_token' });
  });

  it('refuses HS/RS confusion both ways: HS256 over the public key for a JWKS tenant, RS256 for an HS tenant', async () => {
    const pem = await exportSPKI(k2.publicKey);
    const jwk = await publicJwk(k2, 'kid-2');
    for (const secret of [new TextEncoder().encode(pem), new TextEncoder().encode(JSON.stringify(jwk))]) {
      const forged = await new SignJWT({})
        .setProtectedHeader({ alg: 'HS256', kid: 'kid-2' })
        .setIssuer(ISSUER)
        .setAudience('gpugate')
        .setSubject('attacker')
        .setExpirationTime('5m')
        .sign(secret);
      expect(await call(forged)).toMatchObject({ status: 401, code: 'invalid_token' });
    }
    const rsForHs = await new SignJWT({ uid: 'x' })
      .setProtectedHeader({ alg: 'RS256', kid: 'kid-2' })
      .setIssuer(HS_ISSUER)
      .setExpirationTime('5m')
      .sign(k2.privateKey);
    expect(await call(rsForHs)).toMatchObject({ status: 401, code: 'invalid_token' });
  });

  it('admits an HS256 token of a tenant with a shared secret, with its own claims for subject and name', async () => {
    const token = await new SignJWT({ uid: 'svc-7', name: 'Zoë' })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer(HS_ISSUER)
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(HS_SECRET));
    const before = up.requests.length;
    expect((await call(token)).status).toBe(200);
    const seen = up.requests[before];
    expect(seen?.headers['x-gpugate-tenant']).toBe('hs');
    expect(seen?.headers['x-user-id']).toBe('svc-7');
    expect(seen?.headers['x-username']).toBe(encodeURIComponent('Zoë'));
    const wrongSecret = await new SignJWT({ uid: 'svc-7' })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer(HS_ISSUER)
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode('not-the-secret-but-long-enough-0123456789'));
    expect(await call(wrongSecret)).toMatchObject({ status: 401, code: 'invalid_token' });
  });
});
