// Async task affinity: a job submitted through one data plane is found from another one sharing
// Postgres, reaches the simulator that accepted it, and only for the tenant that submitted it.
// (The two data planes run in this process with separate pools, runtimes and task-store caches;
// Postgres is the only thing they share, as two replicas would.)
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createTaskStore } from '../../dataplane/metering/tasks.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { useTestDatabase } from '../fixtures/postgres.ts';
import { apiKey, backend, snapshot, startPlane, tenant } from './harness.ts';

describe('async task affinity across replicas', () => {
  const db = useTestDatabase();
  const pools: pg.Pool[] = [];
  const sims: Simulator[] = [];
  let planeA: DataPlane;
  let planeB: DataPlane;
  const acme = apiKey('acme');
  const globex = apiKey('globex');

  beforeAll(async () => {
    for (let i = 0; i < 4; i++)
      sims.push(await startSimulator({ models: ['upscaler'], jobMs: 50, name: `sim-${i}` }));
    const snap = snapshot({
      backends: [
        backend(
          'ns/upscale',
          sims.map((s) => s.url),
          {
            protocol: 'generic',
            models: ['upscaler'],
            routes: [
              { pathPrefix: '/v1/images', methods: ['POST'], public: false, cost: 1 },
              { pathPrefix: '/status', methods: ['GET'], public: false, cost: 0 },
              { pathPrefix: '/download', methods: ['GET'], public: false, cost: 0 },
            ],
            asyncTasks: {
              submitPathPrefix: '/v1/images/jobs',
              taskIdField: 'task_id',
              taskPaths: ['/status/{id}', '/download/{id}'],
              ttlMs: 600_000,
            },
          },
        ),
      ],
      tenants: [tenant('acme'), tenant('globex')],
      keys: [acme.key, globex.key],
    });
    const planes: DataPlane[] = [];
    for (let i = 0; i < 2; i++) {
      const pool = new pg.Pool({ connectionString: db.url, max: 2 });
      pool.on('error', () => undefined);
      pools.push(pool);
      if (i === 0) await migrate(pool);
      const plane = await startPlane({ taskStore: createTaskStore({ pool }) });
      expect(plane.applySnapshot(snap).accepted).toBe(true);
      planes.push(plane);
    }
    [planeA, planeB] = planes as [DataPlane, DataPlane];
  });

  afterAll(async () => {
    await Promise.all([planeA.close({ drainMs: 500 }), planeB.close({ drainMs: 500 })]);
    await Promise.all(sims.map((s) => s.close()));
    await Promise.all(pools.map((p) => p.end()));
  });

  const submit = async (key: string) => {
    const r = await request(planeA.url + '/v1/images/jobs', {
      method: 'POST',
      body: Buffer.alloc(2048, 3),
      headers: { 'content-type': 'application/octet-stream', authorization: `Bearer ${key}` },
    });
    expect(r.statusCode).toBeLessThan(300);
    const body = (await r.body.json()) as { task_id: string };
    return { taskId: body.task_id, sim: r.headers['x-sim-name'] as string };
  };

  it('sends status and download requests from another replica to the endpoint that accepted the task', async () => {
    const accepting = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const { taskId, sim } = await submit(acme.secret);
      accepting.add(sim);
      for (let poll = 0; poll < 200; poll++) {
        const r = await request(`${planeB.url}/status/${taskId}`, {
          headers: { authorization: `Bearer ${acme.secret}` },
        });
        expect(r.statusCode).toBe(200);
        expect(r.headers['x-sim-name']).toBe(sim);
        const status = (await r.body.json()) as { status: string };
        if (status.status === 'done') break;
        await new Promise((res) => setTimeout(res, 10));
      }
      const d = await request(`${planeB.url}/download/${taskId}`, {
        headers: { authorization: `Bearer ${acme.secret}` },
      });
      expect(d.statusCode).toBe(200);
      expect(d.headers['x-sim-name']).toBe(sim);
      await d.body.dump();
    }
    // Submits were spread over several simulators, so following the task was not luck.
    expect(accepting.size).toBeGreaterThan(1);
  });

  it('answers 404 to another tenant and for an unknown task id', async () => {
    const { taskId } = await submit(acme.secret);
    const other = await request(`${planeB.url}/status/${taskId}`, {
      headers: { authorization: `Bearer ${globex.secret}` },
    });
    expect(other.statusCode).toBe(404);
    expect(((await other.body.json()) as { error: { code: string } }).error.code).toBe('unknown_task');
    const unknown = await request(`${planeB.url}/status/no-such-task`, {
      headers: { authorization: `Bearer ${acme.secret}` },
    });
    expect(unknown.statusCode).toBe(404);
    await unknown.body.dump();
  });
});
