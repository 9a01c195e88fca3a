// In-memory async task store for a single replica (the default, and for tests). Replicas that
// share Postgres use createTaskStore from dataplane/metering/tasks.ts, the same interface.
import type { AsyncTask, TaskStore } from '../metering/tasks.ts';

interface Entry {
  endpoint: string;
  tenant: string;
  expiresAt: number;
}

/** Bounded: the oldest entries go first when full; expired ones on lookup and sweep. */
export class MemoryTaskStore implements TaskStore {
  readonly #tasks = new Map<string, Entry>();
  readonly #max: number;

  constructor(maxEntries = 100_000) {
    this.#max = maxEntries;
  }

  remember(task: AsyncTask, ttlMs: number): Promise<void> {
    const key = `${task.backend}\u0000${task.taskId}`;
    const held = this.#tasks.get(key);
    // A task id another tenant holds is not taken over (as in the Postgres store).
    if (held && held.tenant !== task.tenant && held.expiresAt > Date.now()) return Promise.resolve();
    this.#tasks.delete(key);
    this.#tasks.set(key, { endpoint: task.endpoint, tenant: task.tenant, expiresAt: Date.now() + ttlMs });
    while (this.#tasks.size > this.#max) {
      const oldest = this.#tasks.keys().next().value;
      if (oldest === undefined) break;
      this.#tasks.delete(oldest);
    }
    return Promise.resolve();
  }

  find(backend: string, taskId: string, tenant: string): Promise<string | null> {
    const key = `${backend}\u0000${taskId}`;
    const e = this.#tasks.get(key);
    if (!e) return Promise.resolve(null);
    if (e.expiresAt <= Date.now()) {
      this.#tasks.delete(key);
      return Promise.resolve(null);
    }
    return Promise.resolve(e.tenant === tenant ? e.endpoint : null);
  }

  sweepExpired(): Promise<number> {
    const now = Date.now();
    let n = 0;
    for (const [k, e] of this.#tasks) {
      if (e.expiresAt <= now) {
        this.#tasks.delete(k);
        n++;
      }
    }
    return Promise.resolve(n);
  }
}
