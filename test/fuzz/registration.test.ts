// Property tests over the registration webhook (POST /webhook/register and /webhook/unregister) through
// real sockets into real Postgres: random bodies (valid, arbitrary JSON, broken JSON, oversized), content
// types, backend names and secrets. Invariants: never a 5xx, never a crash; a row is recorded only by a
// request that carried the backend's exact secret and was answered 200/201; after the run the table holds
// exactly what the accepted requests left there. The per-address failure throttle is off here (its own
// test is test/dataplane/registration-throttle.test.ts) so every guess reaches the secret check.
import fc from 'fast-check';
import type pg from 'pg';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../../dataplane/config/revision.ts';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { REGISTRATION_SECRET_HEADER } from '../../dataplane/registration/routes.ts';
import { createPgRegistrationStore } from '../../dataplane/registration/store.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { backend, snapshot, startPlane } from '../dataplane/harness.ts';

const RUNS = process.env.GPUGATE_SOAK === '1' ? 2000 : 200;
const SECRET = 'fleet-secret-0123456789';
const OTHER_SECRET = 'other-fleet-secret';

describe('registration webhook under arbitrary input', () => {
  const db = useTestDatabase();
  let pool: pg.Pool;
  let plane: DataPlane;

  beforeAll(async () => {
    pool = suitePool(db, 2);
    await migrate(pool);
    plane = await startPlane({ registrationStore: createPgRegistrationStore(pool) });
    const applied = plane.applySnapshot(
      snapshot({
        backends: [
          backend('ns/gpus', [], { registration: { secretSha256: sha256Hex(SECRET), ttlMs: 600_000 } }),
          backend('ns/other', [], {
            models: ['other'],
            registration: { secretSha256: sha256Hex(OTHER_SECRET), ttlMs: 600_000 },
          }),
          backend('ns/closed', [], { models: ['closed'], registration: null }),
        ],
        settings: { clientLimits: { authFailuresPerMinute: 0, publicRequestsPerMinute: 0 } },
      }),
    );
    expect(applied).toMatchObject({ accepted: true });
  });
  afterAll(async () => {
    await plane?.close({ drainMs: 0 });
    await pool?.end();
  });

  const printable = fc
    .array(fc.integer({ min: 0x21, max: 0x7e }), { minLength: 1, maxLength: 64 })
    .map((codes) => String.fromCharCode(...codes));
  const secret = fc.oneof(
    { weight: 3, arbitrary: fc.constant(SECRET) },
    fc.constant(OTHER_SECRET),
    fc.constant(undefined),
    fc.constant(''),
    fc.constantFrom(SECRET.toUpperCase(), SECRET.slice(1), `${SECRET}x`, sha256Hex(SECRET)),
    printable,
  );
  const backendRef = fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom('gpus', 'ns/gpus', 'other', 'ns/other') },
    fc.constantFrom('gpus', 'ns/gpus', 'other', 'ns/other', 'closed', 'ns/closed', 'nosuch', '', '/', 'ns/'),
    printable,
  );
  const url = fc.oneof(
    { weight: 4, arbitrary: fc.nat({ max: 20 }).map((i) => `http://10.1.0.${i}:8000`) },
    fc.constantFrom(
      'https://gpu.internal:8443/v1/',
      'ftp://10.1.0.1',
      'http://user:pw@10.1.0.1',
      'http://10.1.0.1/?q=1',
      'not a url',
      '',
      'http://' + 'h'.repeat(3000),
    ),
    printable,
  );
  const body = fc.oneof(
    { weight: 8, arbitrary: fc.record({ backend: backendRef, url }).map((b) => JSON.stringify(b)) },
    fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
    fc.record({ backend: fc.jsonValue(), url: fc.jsonValue() }).map((v) => JSON.stringify(v)),
    fc.constantFrom('{"backend": "gpus", "url": ', 'not json', '', '[]', 'null', '{"__proto__": {"x": 1}}'),
    fc.constant(JSON.stringify({ backend: 'gpus', url: 'http://10.1.0.99:8000', pad: 'z'.repeat(20_000) })),
  );
  const contentType = fc.oneof(
    { weight: 4, arbitrary: fc.constant('application/json') },
    fc.constantFrom('application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded', ''),
  );
  const path = fc.constantFrom('/webhook/register', '/webhook/unregister');

  it('records nothing without the exact secret and never answers 5xx', async () => {
    const statuses: Record<number, number> = {};
    /** backend id -> urls the accepted requests leave registered */
    const expected = new Map<string, Set<string>>();
    const exactSecret: Record<string, string> = { 'ns/gpus': SECRET, 'ns/other': OTHER_SECRET };
    await fc.assert(
      fc.asyncProperty(path, body, contentType, secret, async (p, b, ct, s) => {
        const res = await request(`${plane.url}${p}`, {
          method: 'POST',
          body: b,
          headers: {
            ...(ct ? { 'content-type': ct } : {}),
            ...(s === undefined ? {} : { [REGISTRATION_SECRET_HEADER]: s }),
          },
        });
        const text = await res.body.text();
        statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
        expect([200, 201, 400, 401, 404, 409, 413, 415], `${res.statusCode} ${text}`).toContain(
          res.statusCode,
        );
        if (res.statusCode === 200 || res.statusCode === 201) {
          const answer = JSON.parse(text) as { backend: string; url: string; removed?: boolean };
          expect(s, `accepted for ${answer.backend} without its secret`).toBe(exactSecret[answer.backend]);
          const set = expected.get(answer.backend) ?? new Set<string>();
          expected.set(answer.backend, set);
          if (p === '/webhook/register') set.add(answer.url);
          else set.delete(answer.url);
        } else {
          expect(JSON.parse(text)).toMatchObject({ error: { code: expect.any(String) } });
          expect(text).not.toContain(SECRET);
        }
      }),
      { numRuns: RUNS, seed: 42 },
    );
    const { rows } = await pool.query<{ backend: string; url: string }>(
      'SELECT backend, url FROM registered_endpoints ORDER BY backend, url',
    );
    const stored = rows.map((r) => `${r.backend} ${r.url}`);
    const wanted = [...expected].flatMap(([b, urls]) => [...urls].map((u) => `${b} ${u}`)).sort();
    console.log(
      `registration fuzz: ${RUNS} runs, statuses ${JSON.stringify(statuses)}, ${stored.length} rows stored`,
    );
    expect(stored.sort()).toEqual(wanted);
    expect(rows.every((r) => r.backend === 'ns/gpus' || r.backend === 'ns/other')).toBe(true);
    // Accepted registrations did happen, so the invariant was not met by refusing everything.
    expect((statuses[201] ?? 0) + (statuses[200] ?? 0)).toBeGreaterThan(0);
    expect(statuses[401] ?? 0).toBeGreaterThan(0);
  });
});
