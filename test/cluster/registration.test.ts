// Self-registration of external GPU servers, and Tenant usage from Postgres, on the real control plane:
// the operator as a process with its own service account and DATABASE_URL, a data-plane process on
// loopback metering into the same database (it records registrations there), and a GPU simulator that
// registers itself through the data plane's public port. Waits are bounded polls on invariants; nothing
// here asserts how long anything took.
import type pg from 'pg';
import type { Condition } from '../../operator/api/v1alpha1/common.ts';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REGISTRATION_SECRET_HEADER } from '../../dataplane/registration/routes.ts';
import type { Simulator } from '../fixtures/gpusim/index.ts';
import { createTestDatabase, suitePool, type TestDatabase } from '../fixtures/postgres.ts';
import type { DataPlaneProcess, Proc } from '../fixtures/processes.ts';
import { kubectl, waitUntil } from './harness.ts';
import {
  chatStatus,
  condition,
  getJson,
  secretValue,
  startOperatorProcess,
  startOperatorSuite,
  startSim,
  type OperatorSuite,
} from './operator-helpers.ts';

const TOKEN = 'registration-test-push-token';
const SECRET = 'registration-shared-secret-0123456789';
const MODEL = 'sim-reg-8b';

interface Backend {
  status?: {
    endpoints?: { url: string; source: string; ready: boolean }[];
    conditions?: Condition[];
  };
}

describe('self-registration and tenant usage', () => {
  let suite: OperatorSuite;
  let ns: string;
  let db: TestDatabase;
  let pool: pg.Pool;
  let sim: Simulator;
  let other: Simulator;
  let dataPlane: DataPlaneProcess;
  let operator: Proc & { url: string };
  let key: string;
  const apply = (yaml: string) => suite.apply(yaml);

  const call = async (path: string, body: unknown, secret: string | null) => {
    const res = await request(`${dataPlane.url}${path}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(secret === null ? {} : { [REGISTRATION_SECRET_HEADER]: secret }),
      },
      body: JSON.stringify(body),
    });
    return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
  };
  const rows = async () =>
    (await pool.query<{ backend: string; url: string }>('SELECT backend, url FROM registered_endpoints'))
      .rows;
  const registered = async (name: string) =>
    ((await getJson<Backend>(['get', 'gpubackend', name, '-n', ns])).status?.endpoints ?? []).filter(
      (e) => e.source === 'registered',
    );

  beforeAll(async () => {
    db = await createTestDatabase();
    pool = suitePool(db, 2);
    // --database-url: the data plane migrates (registered_endpoints included) and records there.
    suite = await startOperatorSuite({
      prefix: 'registration',
      token: TOKEN,
      model: MODEL,
      dataPlaneArgs: ['--database-url', db.url],
    });
    ({ ns, sim, dataPlane } = suite);
    const { kubeconfig } = suite;
    await kubectl(['create', 'secret', 'generic', 'gpu-join', '-n', ns, `--from-literal=secret=${SECRET}`]);
    other = await startSim(MODEL, 'other');
    await apply(`
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: joiners}
spec:
  models: [${MODEL}]
  registration: {secretRef: {name: gpu-join}, ttl: 60s}
  healthCheck: {interval: 500ms}
---
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: {name: brief}
spec:
  models: [other-model]
  registration: {secretRef: {name: gpu-join}, ttl: 2s}
---
apiVersion: gpugate.io/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {}
---
apiVersion: gpugate.io/v1alpha1
kind: ApiKey
metadata: {name: acme-key}
spec: {tenant: acme}
---
apiVersion: gpugate.io/v1alpha1
kind: Tenant
metadata: {name: billed}
spec:
  quota: {credits: 1000, period: Monthly}
`);
    operator = await startOperatorProcess({
      ns,
      kubeconfig,
      dataplaneUrls: [dataPlane.adminUrl],
      extra: ['--usage-interval-ms', '500', '--registration-interval-ms', '1000'],
      env: { DATABASE_URL: db.url },
    });
    await waitUntil('ApiKey acme-key Ready', async () => {
      const o = await getJson<Backend>(['get', 'apikey', 'acme-key', '-n', ns]);
      return condition(o, 'Ready')?.status === 'True';
    });
    key = await secretValue(ns, 'acme-key-gpugate-key', 'key');
    // The data plane has the backends once a registration attempt is judged rather than 503.
    await waitUntil('the data plane to know the registration backends', async () => {
      const r = await call('/webhook/register', { backend: 'joiners', url: sim.url }, 'not-it');
      return r.status === 401;
    });
  });

  afterAll(async () => {
    await operator?.kill();
    await suite?.close();
    await other?.close();
    await pool?.end();
    await db?.drop();
  });

  it('refuses a wrong secret, a missing secret and an unknown backend with 401 and records nothing', async () => {
    const cases = [
      await call('/webhook/register', { backend: 'joiners', url: sim.url }, `${SECRET}x`),
      await call('/webhook/register', { backend: `${ns}/joiners`, url: sim.url }, null),
      await call('/webhook/register', { backend: 'nosuch', url: sim.url }, SECRET),
      await call('/webhook/unregister', { backend: 'joiners', url: sim.url }, 'wrong'),
    ];
    for (const r of cases) {
      expect(r.status).toBe(401);
      expect(r.body).toMatchObject({
        error: { type: 'authentication_error', code: 'invalid_registration_secret' },
      });
    }
    const bad = await call('/webhook/register', { backend: 'joiners', url: 'ftp://x' }, SECRET);
    expect(bad.status).toBe(400);
    expect(await rows()).toEqual([]);
    expect(await registered('joiners')).toEqual([]);
    expect(dataPlane.log()).not.toContain(SECRET);
  });

  it('a registered server gets traffic: status lists it as registered and a key is served through it; renewing is idempotent', async () => {
    const first = await call('/webhook/register', { backend: 'joiners', url: `${sim.url}/` }, SECRET);
    expect(first.status).toBe(201);
    expect(first.body).toMatchObject({ backend: `${ns}/joiners`, url: sim.url, ttlMs: 60_000 });
    const again = await call('/webhook/register', { backend: `${ns}/joiners`, url: sim.url }, SECRET);
    expect(again.status).toBe(200);
    expect(await rows()).toEqual([{ backend: `${ns}/joiners`, url: sim.url }]);

    await waitUntil(
      'a completion through the registered endpoint',
      async () => (await chatStatus(dataPlane.url, key, MODEL)) === 200,
    );
    const before = sim.stats().requestsByPath['/v1/chat/completions'] ?? 0;
    expect(await chatStatus(dataPlane.url, key, MODEL)).toBe(200);
    expect(sim.stats().requestsByPath['/v1/chat/completions']).toBe(before + 1);
    const eps = await waitUntil('status to list the registered endpoint', async () => {
      const e = await registered('joiners');
      return e.length === 1 && e;
    });
    expect(eps).toEqual([{ url: sim.url, source: 'registered', ready: true }]);
    const b = await getJson<Backend>(['get', 'gpubackend', 'joiners', '-n', ns]);
    expect(condition(b, 'Ready')).toMatchObject({ status: 'True', reason: 'EndpointsReady' });
  });

  it('unregistering removes the endpoint from the table, the status and the route', async () => {
    await call('/webhook/register', { backend: 'joiners', url: sim.url }, SECRET);
    await waitUntil('registered', async () => (await chatStatus(dataPlane.url, key, MODEL)) === 200);
    const r = await call('/webhook/unregister', { backend: 'joiners', url: sim.url }, SECRET);
    expect(r).toMatchObject({ status: 200, body: { removed: true } });
    expect(await rows()).toEqual([]);
    await waitUntil('status without the endpoint', async () => (await registered('joiners')).length === 0);
    await waitUntil(
      'no completion without endpoints',
      async () => (await chatStatus(dataPlane.url, key, MODEL)) >= 500,
    );
    const twice = await call('/webhook/unregister', { backend: 'joiners', url: sim.url }, SECRET);
    expect(twice).toMatchObject({ status: 200, body: { removed: false } });
  });

  it('an endpoint that stops renewing expires after its ttl', async () => {
    // Renew (every 500 ms, ttl 2 s) until the status shows it, then stop renewing.
    let renewing = true;
    const renew = (async () => {
      while (renewing) {
        await call('/webhook/register', { backend: 'brief', url: other.url }, SECRET);
        await new Promise((r) => setTimeout(r, 500));
      }
    })();
    try {
      await waitUntil('the renewed endpoint in status', async () => (await registered('brief')).length === 1);
    } finally {
      renewing = false;
      await renew;
    }
    await waitUntil(
      'the endpoint to expire from status',
      async () => (await registered('brief')).length === 0,
    );
    const live = await pool.query(
      `SELECT 1 FROM registered_endpoints WHERE url = $1 AND expires_at > now()`,
      [other.url],
    );
    expect(live.rowCount).toBe(0);
  });

  it("a Tenant's status.usage reflects the usage rows of its current period", async () => {
    const today = new Date().toISOString().slice(0, 10);
    const old = new Date(Date.now() - 62 * 86_400_000).toISOString().slice(0, 10);
    const tenant = `${ns}/billed`;
    await pool.query(
      `INSERT INTO usage_daily (tenant, day, key_id, backend, model, requests, input_tokens, output_tokens, credits, errors)
       VALUES ($1, $2, 'k1', 'b', 'm1', 7, 100, 50, 120.5, 0),
              ($1, $2, 'k2', 'b', 'm2', 3, 10, 5, 9.5, 1),
              ($1, $3, 'k1', 'b', 'm1', 1000, 1000, 1000, 900, 0),
              ($4, $2, 'k9', 'b', 'm1', 1000, 1000, 1000, 900, 0)`,
      [tenant, today, old, `${ns}/someone-else`],
    );
    const usage = await waitUntil('Tenant billed usage from Postgres', async () => {
      const o = await getJson<{ status?: { usage?: Record<string, unknown> } }>([
        'get',
        'tenant',
        'billed',
        '-n',
        ns,
      ]);
      return o.status?.usage?.requests === 10 && o.status.usage;
    });
    expect(usage).toMatchObject({
      period: 'Monthly',
      requests: 10,
      inputTokens: 110,
      outputTokens: 55,
      creditsUsed: 130,
      creditsRemaining: 870,
    });
    // More rows: the next read follows.
    await pool.query(
      `UPDATE usage_daily SET requests = requests + 5, credits = credits + 70 WHERE tenant = $1 AND day = $2 AND key_id = 'k1'`,
      [tenant, today],
    );
    await waitUntil('usage to follow new rows', async () => {
      const o = await getJson<{ status?: { usage?: Record<string, unknown> } }>([
        'get',
        'tenant',
        'billed',
        '-n',
        ns,
      ]);
      return o.status?.usage?.requests === 15 && o.status.usage.creditsRemaining === 800;
    });
  });

  it("rewrites a Tenant's status only when its usage changed, not on every usage read", async () => {
    const today = new Date().toISOString().slice(0, 10);
    await apply(`
apiVersion: gpugate.io/v1alpha1
kind: Tenant
metadata: {name: steady}
spec:
  quota: {credits: 500, period: Monthly}
`);
    await pool.query(
      `INSERT INTO usage_daily (tenant, day, key_id, backend, model, requests, input_tokens, output_tokens, credits, errors)
       VALUES ($1, $2, 'k1', 'b', 'm1', 4, 40, 20, 12, 0)`,
      [`${ns}/steady`, today],
    );
    interface Steady {
      metadata: { resourceVersion: string };
      status?: { keys?: number; conditions?: Condition[]; usage?: Record<string, unknown> };
    }
    const steady = () => getJson<Steady>(['get', 'tenant', 'steady', '-n', ns]);
    const written = await waitUntil('Tenant steady Ready with its usage', async () => {
      const o = await steady();
      return condition(o, 'Ready')?.status === 'True' && o.status?.usage?.requests === 4 && o;
    });
    const tenantReads = async () => {
      const text = await (await request(`${operator.url}/metrics`)).body.text();
      const m = /^gpugate_operator_reconciles_total\{kind="Tenant",result="requeue"\} (\d+)$/m.exec(text);
      return Number(m?.[1] ?? 0);
    };
    // Three Tenants, each read every 500 ms (--usage-interval-ms): 18 more reads that end in a requeue
    // are about six reads of steady, every one with the same figures and a new updatedAt.
    const from = await tenantReads();
    const versions = new Set([written.metadata.resourceVersion]);
    await waitUntil(
      'six usage intervals',
      async () => {
        versions.add((await steady()).metadata.resourceVersion);
        return (await tenantReads()) >= from + 18;
      },
      60_000,
    );
    const after = await steady();
    versions.add(after.metadata.resourceVersion);
    expect([...versions]).toEqual([written.metadata.resourceVersion]);
    expect(after.status?.usage?.updatedAt).toBe(written.status?.usage?.updatedAt);

    // A changed figure is written at the next read, with a new updatedAt.
    await pool.query(
      `UPDATE usage_daily SET requests = requests + 1, credits = credits + 3 WHERE tenant = $1 AND day = $2`,
      [`${ns}/steady`, today],
    );
    const changed = await waitUntil('usage to follow the changed row', async () => {
      const o = await steady();
      return o.status?.usage?.requests === 5 && o;
    });
    expect(changed.status?.usage).toMatchObject({ creditsUsed: 15, creditsRemaining: 485 });
    expect(changed.metadata.resourceVersion).not.toBe(written.metadata.resourceVersion);
    expect(Date.parse(String(changed.status?.usage?.updatedAt))).toBeGreaterThan(
      Date.parse(String(written.status?.usage?.updatedAt)),
    );
  });
});
