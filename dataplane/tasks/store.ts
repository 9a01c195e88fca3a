// Async task affinity: a task id from a submit response is remembered with the endpoint that
// accepted it and the tenant that submitted it, so status/download requests reach that endpoint from
// any replica and only for that tenant. The shared implementation lives in Postgres (metering
// fixture); this in-memory one serves a single replica and tests.

export interface TaskRecord {
  taskId: string;
  backend: string;
  endpointId: string;
  /** Tenant id; '' for tasks submitted on a public route. */
  tenant: string;
  /** Epoch ms after which the record is forgotten. */
  expiresAt: number;
}

export interface TaskStore {
  record(taskId: string, backend: string, endpointId: string, tenant: string, ttlMs: number): Promise<void>;
  lookup(taskId: string): Promise<TaskRecord | null>;
}

/** Bounded in-memory store: oldest entries go first when full, expired ones on lookup. */
export class MemoryTaskStore implements TaskStore {
  readonly #tasks = new Map<string, TaskRecord>();
  readonly #max: number;

  constructor(maxEntries = 100_000) {
    this.#max = maxEntries;
  }

  record(taskId: string, backend: string, endpointId: string, tenant: string, ttlMs: number): Promise<void> {
    this.#tasks.delete(taskId);
    this.#tasks.set(taskId, { taskId, backend, endpointId, tenant, expiresAt: Date.now() + ttlMs });
    while (this.#tasks.size > this.#max) {
      const oldest = this.#tasks.keys().next().value;
      if (oldest === undefined) break;
      this.#tasks.delete(oldest);
    }
    return Promise.resolve();
  }

  lookup(taskId: string): Promise<TaskRecord | null> {
    const r = this.#tasks.get(taskId);
    if (!r) return Promise.resolve(null);
    if (r.expiresAt <= Date.now()) {
      this.#tasks.delete(taskId);
      return Promise.resolve(null);
    }
    return Promise.resolve(r);
  }
}
