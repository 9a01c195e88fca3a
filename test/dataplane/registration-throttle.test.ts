// Wrong registration secrets are failed authentications: they spend the client address's budget
// (settings.clientLimits.authFailuresPerMinute), shared with API keys and JWTs on the proxy, and an
// address over it gets 429 before its secret is checked, even the right one. Real sockets and real
// Postgres; client addresses are told apart through X-Forwarded-For from a trusted proxy (127.0.0.1).
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../../dataplane/config/revision.ts';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { REGISTRATION_SECRET_HEADER } from '../../dataplane/registration/routes.ts';
import { createPgRegistrationStore } from '../../dataplane/registration/store.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { apiKey, backend, snapshot, startPlane, tenant } from './harness.ts';

const SECRET = 'the-fleet-registration-secret';
const FAILURES_PER_MINUTE = 4;

describe('registration secret guessing is throttled per client address', () => {
  const db = useTestDatabase();
  let pool: pg.Pool;
  let plane: DataPlane;
  const key = apiKey('team/a');

  const register = async (from: string, secret: string | undefined, url = 'http://10.9.0.1:8000') => {
    const res = await fetch(`${plane.url}/webhook/register`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'x-forwarded-for': from,
        ...(secret === undefined ? {} : { [REGISTRATION_SECRET_HEADER]: secret }),
      },
      body: JSON.stringify({ backend: 'gpus', url }),
    });
    const body = (await res.json()) as { error?: { code: string; message: string } };
    return { status: res.status, retryAfter: res.headers.get('retry-after'), body };
  };
  const rows = async () =>
    Number((await pool.query('SELECT count(*) AS n FROM registered_endpoints')).rows[0].n);

  beforeAll(async () => {
    pool = suitePool(db, 2);
    await migrate(pool);
    plane = await startPlane({ registrationStore: createPgRegistrationStore(pool) });
    const applied = plane.applySnapshot(
      snapshot({
        backends: [
          backend('ns/gpus', ['http://127.0.0.1:9'], {
            registration: { secretSha256: sha256Hex(SECRET), ttlMs: 60_000 },
          }),
        ],
        tenants: [tenant('team/a')],
        keys: [key.key],
        settings: {
          trustedProxies: ['127.0.0.1/32'],
          clientLimits: { authFailuresPerMinute: FAILURES_PER_MINUTE, publicRequestsPerMinute: 600 },
        },
      }),
    );
    expect(applied).toMatchObject({ accepted: true });
  });
  afterAll(async () => {
    await plane?.close({ drainMs: 0 });
    await pool?.end();
  });

  it('after the budget of wrong secrets, the address gets 429 even with the right secret; nothing is recorded', async () => {
    const guesser = '203.0.113.7';
    for (let i = 0; i < FAILURES_PER_MINUTE; i++) {
      const r = await register(guesser, `guess-${i}`);
      expect(r.status, `guess ${i}`).toBe(401);
      expect(r.body.error?.code).toBe('invalid_registration_secret');
    }
    const over = await register(guesser, 'guess-over');
    expect(over.status).toBe(429);
    expect(over.body.error?.code).toBe('rate_limit_exceeded');
    expect(over.body.error?.message).toContain('too many failed authentications');
    expect(Number(over.retryAfter)).toBeGreaterThanOrEqual(1);
    // The right secret from the throttled address is not even checked.
    expect((await register(guesser, SECRET)).status).toBe(429);
    // Unregistering is the same authentication.
    const unregister = await fetch(`${plane.url}/webhook/unregister`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'x-forwarded-for': guesser,
        [REGISTRATION_SECRET_HEADER]: SECRET,
      },
      body: JSON.stringify({ backend: 'gpus', url: 'http://10.9.0.1:8000' }),
    });
    expect(unregister.status).toBe(429);
    await unregister.body?.cancel();
    expect(await rows()).toBe(0);
  });

  it('the budget is shared with API keys: a valid key from the throttled address is refused too', async () => {
    const res = await fetch(`${plane.url}/v1/models`, {
      headers: { authorization: `Bearer ${key.secret}`, 'x-forwarded-for': '203.0.113.7' },
    });
    expect(res.status).toBe(429);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('rate_limit_exceeded');
  });

  it('another address still registers with the right secret', async () => {
    const r = await register('198.51.100.20', SECRET, 'http://10.9.0.2:8000');
    expect(r.status).toBe(201);
    expect(await rows()).toBe(1);
  });

  it('requests without a secret guess nothing and are not counted', async () => {
    const from = '198.51.100.30';
    for (let i = 0; i < FAILURES_PER_MINUTE * 3; i++)
      expect((await register(from, undefined)).status).toBe(401);
    expect((await register(from, SECRET, 'http://10.9.0.3:8000')).status).toBe(201);
  });

  it('the refusals are counted as auth_failures rejections', async () => {
    const res = await fetch(`${plane.adminUrl}/metrics`);
    const text = await res.text();
    const line = text
      .split('\n')
      .find(
        (l) => l.startsWith('gpugate_admission_rejections_total') && l.includes('reason="auth_failures"'),
      );
    expect(line, 'rejections metric line').toBeDefined();
    expect(Number(line!.split(' ').pop())).toBeGreaterThanOrEqual(3);
  });
});
