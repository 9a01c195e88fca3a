// Async GPU tasks across replicas: which endpoint accepted a task, so that status and download
// requests for it reach that endpoint from any replica, and only for the tenant that submitted it.
// remember() must finish before the submit response goes back to the client: the client's next
// request may land on another replica at once.
import type pg from 'pg';

export interface AsyncTask {
  backend: string;
  taskId: string;
  endpoint: string;
  tenant: string;
}

export interface TaskStore {
  /** Record an accepted task for ttlMs. A task id already held by another tenant is not taken over. */
  remember(task: AsyncTask, ttlMs: number): Promise<void>;
  /** The endpoint that holds the task, or null when unknown, expired or another tenant's (answer 404). */
  find(backend: string, taskId: string, tenant: string): Promise<string | null>;
  /** Delete expired tasks; returns how many. */
  sweepExpired(): Promise<number>;
}

export interface TaskStoreOptions {
  pool: pg.Pool;
  /** Tasks this replica keeps in memory after a lookup or submit (status polls repeat). Default 10,000. */
  cacheSize?: number;
}

const REMEMBER = `
INSERT INTO async_tasks AS t (backend, task_id, endpoint, tenant, created_at, expires_at)
VALUES ($1, $2, $3, $4, now(), now() + make_interval(secs => $5::float8 / 1000))
ON CONFLICT (backend, task_id) DO UPDATE SET endpoint = excluded.endpoint, expires_at = excluded.expires_at
WHERE t.tenant = excluded.tenant`;

const FIND = `
SELECT endpoint, tenant, (extract(epoch FROM expires_at) * 1000)::float8 AS expires
FROM async_tasks WHERE backend = $1 AND task_id = $2 AND expires_at > now()`;

/** Delete expired task records; returns how many. The store's sweep and the maintenance job both run it. */
export async function deleteExpiredTasks(pool: pg.Pool): Promise<number> {
  const result = await pool.query('DELETE FROM async_tasks WHERE expires_at <= now()');
  return result.rowCount ?? 0;
}

interface Cached {
  endpoint: string;
  tenant: string;
  expires: number;
}

export function createTaskStore(options: TaskStoreOptions): TaskStore {
  const { pool } = options;
  const cacheSize = options.cacheSize ?? 10_000;
  // Insertion-ordered Map as a small LRU: a task's endpoint and tenant never change.
  const cache = new Map<string, Cached>();
  const cacheKey = (backend: string, taskId: string): string => `${backend}\u0000${taskId}`;

  function put(key: string, value: Cached): void {
    cache.delete(key);
    cache.set(key, value);
    if (cache.size > cacheSize) cache.delete(cache.keys().next().value!);
  }

  return {
    async remember(task, ttlMs) {
      await pool.query(REMEMBER, [task.backend, task.taskId, task.endpoint, task.tenant, ttlMs]);
      cache.delete(cacheKey(task.backend, task.taskId));
    },
    async find(backend, taskId, tenant) {
      const key = cacheKey(backend, taskId);
      let hit = cache.get(key);
      if (!hit || hit.expires <= Date.now()) {
        const { rows } = await pool.query<Cached>(FIND, [backend, taskId]);
        hit = rows[0];
        if (!hit) {
          cache.delete(key);
          return null;
        }
        put(key, hit);
      }
      return hit.tenant === tenant ? hit.endpoint : null;
    },
    sweepExpired: () => deleteExpiredTasks(pool),
  };
}
