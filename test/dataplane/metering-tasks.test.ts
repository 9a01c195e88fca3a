// Async task affinity across replicas, against real Postgres.
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createTaskStore } from '../../dataplane/metering/tasks.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';

describe('async task store', () => {
  const db = useTestDatabase();
  let pool: pg.Pool;
  beforeAll(async () => {
    pool = suitePool(db, 2);
    await migrate(pool);
  });
  afterAll(() => pool.end());

  it('finds the accepting endpoint from another replica, only for the submitting tenant', async () => {
    const submitter = createTaskStore({ pool });
    const other = createTaskStore({ pool });
    await submitter.remember(
      { backend: 'ns/upscale', taskId: 't-1', endpoint: 'e3', tenant: 'ns/acme' },
      60_000,
    );
    expect(await other.find('ns/upscale', 't-1', 'ns/acme')).toBe('e3');
    expect(await other.find('ns/upscale', 't-1', 'ns/globex')).toBeNull();
    expect(await other.find('ns/other-backend', 't-1', 'ns/acme')).toBeNull();
    expect(await other.find('ns/upscale', 'unknown', 'ns/acme')).toBeNull();
  });

  it('never lets another tenant take over a task id, and forgets tasks once they expire', async () => {
    const store = createTaskStore({ pool });
    await store.remember({ backend: 'ns/upscale', taskId: 't-2', endpoint: 'e1', tenant: 'ns/acme' }, 60_000);
    await store.remember(
      { backend: 'ns/upscale', taskId: 't-2', endpoint: 'e9', tenant: 'ns/globex' },
      60_000,
    );
    expect(await createTaskStore({ pool }).find('ns/upscale', 't-2', 'ns/acme')).toBe('e1');
    expect(await createTaskStore({ pool }).find('ns/upscale', 't-2', 'ns/globex')).toBeNull();

    await store.remember({ backend: 'ns/upscale', taskId: 't-3', endpoint: 'e1', tenant: 'ns/acme' }, 50);
    await new Promise((r) => setTimeout(r, 100));
    expect(await createTaskStore({ pool }).find('ns/upscale', 't-3', 'ns/acme')).toBeNull();
    expect(await store.sweepExpired()).toBeGreaterThanOrEqual(1);
    const { rows } = await pool.query("SELECT task_id FROM async_tasks WHERE task_id = 't-3'");
    expect(rows).toEqual([]);
  });
});
