// Async task affinity: a job submitted through one data plane is found from another one sharing
// Postgres, reaches the simulator that accepted it, and only for the tenant that submitted it.
// Twice: two data planes in this process with separate pools, runtimes and task-store caches; and two
// data-plane OS processes (`node dataplane/main.ts --database-url`), as two replicas run. Postgres is
// the only thing they share.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createTaskStore } from '../../dataplane/metering/tasks.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { startDataPlaneProcess, type DataPlaneProcess } from '../fixtures/processes.ts';
import { apiKey, backend, snapshot, startPlane, tenant } from './harness.ts';

type Key = ReturnType<typeof apiKey>;

function taskSnapshot(sims: readonly Simulator[], keys: readonly Key[]) {
  return snapshot({
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
    keys: keys.map((k) => k.key),
  });
}

async function submit(url: string, key: string): Promise<{ taskId: string; sim: string }> {
  const r = await request(url + '/v1/images/jobs', {
    method: 'POST',
    body: Buffer.alloc(2048, 3),
    headers: { 'content-type': 'application/octet-stream', authorization: `Bearer ${key}` },
  });
  expect(r.statusCode).toBeLessThan(300);
  const body = (await r.body.json()) as { task_id: string };
  return { taskId: body.task_id, sim: r.headers['x-sim-name'] as string };
}

/**
 * Submits four jobs through `a` and follows each through `b` (status until done, then download),
 * checking every answer came from the simulator that accepted the job.
 */
async function followFromOtherReplica(a: string, b: string, key: string): Promise<void> {
  const accepting = new Set<string>();
  for (let i = 0; i < 4; i++) {
    const { taskId, sim } = await submit(a, key);
    accepting.add(sim);
    for (let poll = 0; poll < 200; poll++) {
      const r = await request(`${b}/status/${taskId}`, { headers: { authorization: `Bearer ${key}` } });
      expect(r.statusCode).toBe(200);
      expect(r.headers['x-sim-name']).toBe(sim);
      const status = (await r.body.json()) as { status: string };
      if (status.status === 'done') break;
      await new Promise((res) => setTimeout(res, 10));
    }
    const d = await request(`${b}/download/${taskId}`, { headers: { authorization: `Bearer ${key}` } });
    expect(d.statusCode).toBe(200);
    expect(d.headers['x-sim-name']).toBe(sim);
    await d.body.dump();
  }
  // Submits were spread over several simulators, so following the task was not luck.
  expect(accepting.size).toBeGreaterThan(1);
}

/** Another tenant's request for a task, and an unknown task id, get 404 from `b`. */
async function refuseOthers(a: string, b: string, owner: string, other: string): Promise<void> {
  const { taskId } = await submit(a, owner);
  const r = await request(`${b}/status/${taskId}`, { headers: { authorization: `Bearer ${other}` } });
  expect(r.statusCode).toBe(404);
  expect(((await r.body.json()) as { error: { code: string } }).error.code).toBe('unknown_task');
  const unknown = await request(`${b}/status/no-such-task`, {
    headers: { authorization: `Bearer ${owner}` },
  });
  expect(unknown.statusCode).toBe(404);
  await unknown.body.dump();
}

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
    const snap = taskSnapshot(sims, [acme, globex]);
    const planes: DataPlane[] = [];
    for (let i = 0; i < 2; i++) {
      const pool = suitePool(db, 2);
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

  it('sends status and download requests from another replica to the endpoint that accepted the task', async () => {
    await followFromOtherReplica(planeA.url, planeB.url, acme.secret);
  });

  it('answers 404 to another tenant and for an unknown task id', async () => {
    await refuseOthers(planeA.url, planeB.url, acme.secret, globex.secret);
  });
});

describe('async task affinity across two data-plane processes', () => {
  const db = useTestDatabase();
  const sims: Simulator[] = [];
  const procs: DataPlaneProcess[] = [];
  let dir = '';
  const acme = apiKey('acme');
  const globex = apiKey('globex');

  beforeAll(async () => {
    for (let i = 0; i < 4; i++)
      sims.push(await startSimulator({ models: ['upscaler'], jobMs: 50, name: `proc-sim-${i}` }));
    dir = mkdtempSync(join(tmpdir(), 'gpugate-tasks-'));
    const file = join(dir, 'snapshot.json');
    writeFileSync(file, JSON.stringify(taskSnapshot(sims, [acme, globex])));
    // Both migrate the same empty database at start (under the migration lock), as replicas do.
    const started = await Promise.all(
      [0, 1].map(() =>
        startDataPlaneProcess({ args: ['--snapshot', file, '--database-url', db.url], timeoutMs: 60_000 }),
      ),
    );
    procs.push(...started);
  }, 90_000);

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.kill()));
    await Promise.all(sims.map((s) => s.close()));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('follows a task submitted through one process from the other, both ways, for its tenant only', async () => {
    const [a, b] = procs as [DataPlaneProcess, DataPlaneProcess];
    await followFromOtherReplica(a.url, b.url, acme.secret);
    await followFromOtherReplica(b.url, a.url, globex.secret);
    await refuseOthers(a.url, b.url, acme.secret, globex.secret);
    // The record other processes find is in Postgres, written by the accepting process.
    const pool = suitePool(db, 1);
    try {
      const { rows } = await pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM async_tasks WHERE backend = 'ns/upscale'`,
      );
      expect(rows[0]!.n).toBe(9);
    } finally {
      await pool.end();
    }
  });
});
