// Self-registration in `make run`: the standalone process started from a copy of examples/ plus
// GpuBackends that accept registrations, a model server (a second simulator) that registers itself over
// the public port, and the gateway routing to it only while it is registered and renewing. Real sockets,
// real Postgres (the test server's database, as DATABASE_URL), the same webhook and watcher as a cluster.
import type pg from 'pg';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REGISTRATION_SECRET_HEADER } from '../../dataplane/registration/routes.ts';
import { freePort } from '../../operator/standalone/postgres.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { standaloneEnv, startStandalone, waitFor, type StandaloneProcess } from '../fixtures/standalone.ts';

const db = useTestDatabase();
const SECRET = 'the-shared-secret-of-the-laptop-fleet';

// fleet: takes registrations (60 s ttl); short: ttl 3 s; orphan: its registration Secret is missing.
const REGISTERED_BACKENDS = [
  'apiVersion: v1',
  'kind: Secret',
  'metadata: { name: fleet-registration, namespace: default }',
  `stringData: { secret: ${SECRET} }`,
  '---',
  'apiVersion: gpugate.io/v1alpha1',
  'kind: GpuBackend',
  'metadata: { name: fleet, namespace: default }',
  'spec:',
  '  models: [sim-fleet]',
  '  protocol: openai',
  '  registration: { secretRef: { name: fleet-registration, key: secret } }',
  '---',
  'apiVersion: gpugate.io/v1alpha1',
  'kind: GpuBackend',
  'metadata: { name: short, namespace: default }',
  'spec:',
  '  models: [sim-short]',
  '  protocol: openai',
  '  registration: { secretRef: { name: fleet-registration, key: secret }, ttl: 3s }',
  '---',
  'apiVersion: gpugate.io/v1alpha1',
  'kind: GpuBackend',
  'metadata: { name: orphan, namespace: default }',
  'spec:',
  '  models: [sim-orphan]',
  '  protocol: openai',
  '  registration: { secretRef: { name: no-such-secret, key: secret } }',
  '',
].join('\n');

describe('standalone mode (make run): model-server self-registration', () => {
  let sa: StandaloneProcess;
  let gateway = '';
  let key = '';
  let fleetSim: Simulator;
  let pool: pg.Pool;
  let env: NodeJS.ProcessEnv = {};

  const start = async () => {
    sa = await startStandalone(env);
    ({ gateway, key } = sa);
  };

  beforeAll(async () => {
    // The model server that registers itself; it is in no manifest.
    fleetSim = await startSimulator({
      host: '127.0.0.1',
      port: 0,
      name: 'gpusim-fleet',
      models: ['sim-fleet', 'sim-short'],
      decodeMsPerToken: 0,
      outputTokens: 2,
    });
    env = standaloneEnv({
      simPort: await freePort(),
      databaseUrl: db.url,
      extra: { 'registered.yaml': REGISTERED_BACKENDS },
    });
    await start();
    pool = suitePool(db, 2);
  });

  afterAll(async () => {
    if (sa && sa.exitCode() === null) await sa.stop().catch(() => sa.kill());
    await pool?.end();
    await fleetSim?.close();
  });

  const webhook = async (path: string, body: unknown, secret: string | undefined) => {
    const res = await request(`${gateway}${path}`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(secret === undefined ? {} : { [REGISTRATION_SECRET_HEADER]: secret }),
      },
      body: JSON.stringify(body),
    });
    const json = (await res.body.json()) as Record<string, unknown> & {
      error?: { code: string; message: string };
    };
    return { status: res.statusCode, body: json };
  };
  const complete = async (model: string) => {
    const res = await request(`${gateway}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
    });
    const json = (await res.body.json()) as { error?: { code: string } };
    return { status: res.statusCode, sim: res.headers['x-sim-name'], code: json.error?.code };
  };
  const completionsAtFleetSim = () =>
    fleetSim.requests().filter((r) => r.path === '/v1/chat/completions').length;
  const rows = async () =>
    (
      await pool.query<{ backend: string; url: string }>(
        'SELECT backend, url FROM registered_endpoints WHERE expires_at > now() ORDER BY backend, url',
      )
    ).rows;

  it('prints where model servers register, for the backends whose spec accepts registrations', () => {
    const line = /register\s+POST (\S+) +\(self-registration open for (.*)\)/.exec(sa.out());
    expect(line?.[1]).toBe(`${gateway}/webhook/register`);
    // orphan's Secret is missing: left out of the snapshot, with the same problem the operator reports.
    expect(line?.[2]).toBe('default/fleet, default/short');
    expect(sa.out()).toMatch(/GpuBackend default\/orphan: registration: .*no-such-secret/);
  });

  it('refuses as in the cluster: no spec.registration, a missing Secret or a wrong secret is 401 and records nothing', async () => {
    const url = fleetSim.url;
    for (const [backend, secret] of [
      ['llama', SECRET], // examples/gpubackend-simulator.yaml: static endpoints, no registration
      ['default/orphan', SECRET],
      ['fleet', 'not-the-secret'],
      ['fleet', undefined],
    ] as const) {
      const res = await webhook('/webhook/register', { backend, url }, secret);
      expect(res.status, `${backend} with ${secret ?? 'no secret'}`).toBe(401);
      expect(res.body.error?.code).toBe('invalid_registration_secret');
      expect(JSON.stringify(res.body)).not.toContain(SECRET);
    }
    expect(await rows()).toEqual([]);
    // Nothing registered: the fleet backend has no endpoint to send its model to.
    expect(await complete('sim-fleet')).toMatchObject({ status: 503, code: 'no_endpoints' });
    expect(completionsAtFleetSim()).toBe(0);
  });

  it('a registration makes the model server reachable through the gateway', async () => {
    const res = await webhook('/webhook/register', { backend: 'fleet', url: fleetSim.url }, SECRET);
    expect(res).toMatchObject({ status: 201, body: { backend: 'default/fleet', url: fleetSim.url } });
    expect(await rows()).toEqual([{ backend: 'default/fleet', url: fleetSim.url }]);
    let last: Awaited<ReturnType<typeof complete>> | undefined;
    await waitFor('a completion served by the registered simulator', async () => {
      last = await complete('sim-fleet');
      return last.status === 200;
    });
    expect(last).toMatchObject({ status: 200, sim: 'gpusim-fleet' });
    expect(completionsAtFleetSim()).toBeGreaterThanOrEqual(1);
    // A renewal is 200 and keeps it routed.
    expect((await webhook('/webhook/register', { backend: 'fleet', url: fleetSim.url }, SECRET)).status).toBe(
      200,
    );
    expect(await complete('sim-fleet')).toMatchObject({ status: 200, sim: 'gpusim-fleet' });
  });

  it('unregistering removes it: the gateway stops sending it traffic', async () => {
    const res = await webhook('/webhook/unregister', { backend: 'fleet', url: fleetSim.url }, SECRET);
    expect(res).toMatchObject({ status: 200, body: { removed: true } });
    expect(await rows()).toEqual([]);
    await waitFor('the endpoint to leave the snapshot', async () => {
      const r = await complete('sim-fleet');
      return r.status === 503 && r.code === 'no_endpoints';
    });
    const served = completionsAtFleetSim();
    for (let i = 0; i < 3; i++) {
      expect(await complete('sim-fleet')).toMatchObject({ status: 503, code: 'no_endpoints' });
    }
    expect(completionsAtFleetSim()).toBe(served);
  });

  it('a registration that is no longer renewed expires and stops receiving traffic', async () => {
    const register = () => webhook('/webhook/register', { backend: 'short', url: fleetSim.url }, SECRET);
    expect((await register()).status).toBe(201);
    // Renewed (ttl 3 s) while waiting for it to be routed, so a slow machine cannot let it lapse first.
    let renewedAt = Date.now();
    await waitFor('a completion through the short-lived registration', async () => {
      if (Date.now() - renewedAt > 1_000) {
        expect((await register()).status).toBe(200);
        renewedAt = Date.now();
      }
      const r = await complete('sim-short');
      return r.status === 200 && r.sim === 'gpusim-fleet';
    });
    // No more renewals: the watcher's expiry timer recompiles without it.
    await waitFor('the expired registration to leave the snapshot', async () => {
      const r = await complete('sim-short');
      return r.status === 503 && r.code === 'no_endpoints';
    });
    expect(await rows()).toEqual([]);
    expect(sa.out()).toContain('registered endpoints changed');
  });

  it('a live registration survives a restart: the first snapshot after it already routes to the server', async () => {
    expect((await webhook('/webhook/register', { backend: 'fleet', url: fleetSim.url }, SECRET)).status).toBe(
      201,
    );
    await waitFor('the registration to be routed', async () => (await complete('sim-fleet')).status === 200);
    const pushed = [...sa.out().matchAll(/"revision":"(\w+)","msg":"snapshot pushed"/g)].map((m) => m[1]);
    const withRegistration = pushed.at(-1);
    await sa.stop();
    expect(sa.exitCode()).toBe(0);
    await start();
    // The registration was read before the first compile: the banner's snapshot is the one with it (the
    // revision is a content hash), not one without it that a reload replaces a moment later.
    expect(/standalone, snapshot (\w+)/.exec(sa.out())?.[1]).toBe(withRegistration);
    expect(await complete('sim-fleet')).toMatchObject({ status: 200, sim: 'gpusim-fleet' });
  });
});
