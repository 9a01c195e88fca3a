// Self-registration without Kubernetes: the data plane's webhook routes over real sockets, recording into
// real Postgres, and the operator's watcher reading the rows back (NOTIFY, expiry). The control-plane tier
// (test/cluster/registration.test.ts) runs the whole loop through the operator and a snapshot.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../../dataplane/config/revision.ts';
import { migrate } from '../../dataplane/metering/migrate.ts';
import {
  normalizeEndpointUrl,
  REGISTRATION_SECRET_HEADER,
  resolveBackend,
} from '../../dataplane/registration/routes.ts';
import { createPgRegistrationStore } from '../../dataplane/registration/store.ts';
import { createDataPlane, type DataPlane } from '../../dataplane/server.ts';
import {
  startRegistrationWatcher,
  type RegistrationWatcher,
} from '../../operator/controllers/registration.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { backend, quietLogger, snapshot } from './harness.ts';

const SECRET = 'a-shared-secret-of-the-gpu-fleet';
const reg = (secret: string, ttlMs = 60_000) => ({ secretSha256: sha256Hex(secret), ttlMs });

describe('registration routes', () => {
  it('normalizes endpoint URLs and refuses what is not a plain http(s) origin and path', () => {
    expect(normalizeEndpointUrl('http://10.0.0.7:8000/')).toBe('http://10.0.0.7:8000');
    expect(normalizeEndpointUrl('https://gpu.example:8443/v1/')).toBe('https://gpu.example:8443/v1');
    for (const bad of ['ftp://x', 'http://u:p@x', 'http://x/?a=1', 'http://x/#f', 'nope', '', 42, null])
      expect(normalizeEndpointUrl(bad), String(bad)).toBeNull();
  });

  it('resolves a backend only with its secret; unknown, registration off and wrong secret look alike', () => {
    const backends = [
      backend('a/gpus', [], { registration: reg(SECRET) }),
      backend('b/gpus', [], { registration: reg('other') }),
      backend('c/closed', [], { registration: null }),
      backend('d/twin', [], { registration: reg(SECRET) }),
      backend('e/twin', [], { registration: reg(SECRET) }),
    ];
    expect(resolveBackend(backends, 'gpus', SECRET)).toMatchObject({ ok: true, backend: { id: 'a/gpus' } });
    expect(resolveBackend(backends, 'gpus', 'other')).toMatchObject({ ok: true, backend: { id: 'b/gpus' } });
    expect(resolveBackend(backends, 'a/gpus', 'other')).toEqual({ ok: false, status: 401 });
    expect(resolveBackend(backends, 'c/closed', '')).toEqual({ ok: false, status: 401 });
    expect(resolveBackend(backends, 'nosuch', SECRET)).toEqual({ ok: false, status: 401 });
    expect(resolveBackend(backends, 'twin', SECRET)).toEqual({ ok: false, status: 400 });
    expect(resolveBackend(backends, 'd/twin', SECRET)).toMatchObject({ ok: true, backend: { id: 'd/twin' } });
  });
});

describe('registration on Postgres', () => {
  const db = useTestDatabase();
  let pool: pg.Pool;
  let plane: DataPlane;
  let watcher: RegistrationWatcher;
  const changes: string[][] = [];

  const post = async (path: string, body: unknown, secret?: string) => {
    const res = await fetch(`${plane.url}${path}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(secret === undefined ? {} : { [REGISTRATION_SECRET_HEADER]: secret }),
      },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  const count = async () =>
    Number((await pool.query('SELECT count(*) AS n FROM registered_endpoints')).rows[0].n);

  beforeAll(async () => {
    pool = suitePool(db, 4);
    await migrate(pool);
    plane = await createDataPlane({
      logger: quietLogger,
      registrationStore: createPgRegistrationStore(pool),
      listen: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0, token: null },
    });
    expect(
      plane.applySnapshot(
        snapshot({
          backends: [
            backend('ns/gpus', [], { registration: reg(SECRET) }),
            backend('ns/short', [], { models: ['short'], registration: reg(SECRET, 300) }),
          ],
        }),
      ),
    ).toMatchObject({ accepted: true });
    watcher = startRegistrationWatcher({
      databaseUrl: db.url,
      logger: quietLogger,
      intervalMs: 60_000, // only NOTIFY and expiry wake it in this test
      onChange: (ids) => changes.push(ids),
    });
    await watcher.refresh();
  });

  afterAll(async () => {
    await watcher?.close();
    await plane?.close({ drainMs: 0 });
    await pool?.end();
  });

  const until = async (what: string, check: () => boolean | Promise<boolean>) => {
    for (let i = 0; i < 600; i++) {
      if (await check()) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`timed out waiting for ${what}`);
  };

  it('a wrong or missing secret is 401 and records nothing', async () => {
    expect(
      (await post('/webhook/register', { backend: 'gpus', url: 'http://10.0.0.1:8000' }, 'x')).status,
    ).toBe(401);
    expect((await post('/webhook/register', { backend: 'gpus', url: 'http://10.0.0.1:8000' })).status).toBe(
      401,
    );
    expect(await count()).toBe(0);
  });

  it('register, renew and unregister; the watcher follows through NOTIFY', async () => {
    const url = 'http://10.0.0.2:8000';
    const first = await post('/webhook/register', { backend: 'gpus', url }, SECRET);
    expect(first).toMatchObject({ status: 201, body: { backend: 'ns/gpus', url, ttlMs: 60_000 } });
    await until('the watcher to see it', () => watcher.endpoints('ns/gpus').length === 1);
    expect(watcher.endpoints('ns/gpus')).toEqual([
      expect.objectContaining({ url, source: 'registered', ready: true }),
    ]);
    expect(changes).toContainEqual(['ns/gpus']);
    expect((await post('/webhook/register', { backend: 'ns/gpus', url }, SECRET)).status).toBe(200);
    expect(await count()).toBe(1);
    const gone = await post('/webhook/unregister', { backend: 'gpus', url }, SECRET);
    expect(gone).toMatchObject({ status: 200, body: { removed: true } });
    await until('the watcher to drop it', () => watcher.endpoints('ns/gpus').length === 0);
  });

  it('a registration that is not renewed expires, and coming back is a new registration', async () => {
    const url = 'http://10.0.0.3:8000';
    expect((await post('/webhook/register', { backend: 'short', url }, SECRET)).status).toBe(201);
    // ttl 300 ms: the watcher may or may not see it before it expires; it must end without it.
    await until('expiry', async () => {
      const live = await pool.query(
        'SELECT 1 FROM registered_endpoints WHERE url = $1 AND expires_at > now()',
        [url],
      );
      return live.rowCount === 0 && watcher.endpoints('ns/short').length === 0;
    });
    expect((await post('/webhook/register', { backend: 'short', url }, SECRET)).status).toBe(201);
  });
});
