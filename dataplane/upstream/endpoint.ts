// Per-endpoint and per-backend state that outlives a snapshot swap: the undici Pool, in-flight
// counts, health and scraped load. A runtime compiled from a snapshot references these objects; the
// registry hands out the same object again when an endpoint is unchanged, and closes a pool only
// when no live runtime references it any more.
import { Pool } from 'undici';
import type { Backend, Endpoint } from '../config/snapshot.ts';

/** Load reported by the model server itself (vLLM, TGI, SGLang names), scraped on an interval. */
export interface ServerLoad {
  waiting: number;
  running: number;
  /** 0..1 */
  kvCacheUsage: number;
  /** When it was scraped (epoch ms) and our own in-flight count at that moment. */
  at: number;
  inflightAtScrape: number;
}

export class EndpointState {
  readonly key: string;
  readonly backendId: string;
  readonly id: string;
  readonly url: string;
  readonly origin: string;
  /** Path of the endpoint URL without a trailing slash, prefixed to every forwarded path. */
  readonly basePath: string;
  readonly pool: Pool;
  weight: number;
  ready: boolean;
  inflight = 0;
  /** Set by active health checks; true until a check says otherwise. */
  activeHealthy = true;
  consecutiveCheckOk = 0;
  consecutiveCheckFail = 0;
  /** Passive outlier detection. */
  consecutiveFailures = 0;
  ejectedUntil = 0;
  ejections = 0;
  /** The last failure counted against it (for the admin views: why it was ejected). */
  lastFailure: { kind: string; message: string; at: number } | null = null;
  load: ServerLoad | null = null;
  /** True once its responses carried X-Gpugate-Version: the endpoint is another gpugate. */
  gateway = false;
  closed = false;
  readonly backend: BackendState;

  constructor(key: string, backend: BackendState, endpoint: Endpoint, connectMs: number) {
    this.key = key;
    this.backend = backend;
    this.backendId = backend.id;
    this.id = endpoint.id;
    this.url = endpoint.url;
    const parsed = new URL(endpoint.url);
    this.origin = parsed.origin;
    this.basePath = parsed.pathname.replace(/\/+$/, '');
    this.weight = endpoint.weight;
    this.ready = endpoint.ready;
    this.pool = new Pool(this.origin, {
      connectTimeout: connectMs > 0 ? connectMs : 10_000,
      // Per-request headers/body timeouts are passed on each request from the backend's settings.
      keepAliveTimeout: 4_000,
      pipelining: 1,
    });
  }

  /** Eligible for new requests when the control plane says ready, checks pass and not ejected. */
  healthy(now: number): boolean {
    return this.ready && this.activeHealthy && this.ejectedUntil <= now;
  }

  acquire(): void {
    this.inflight++;
  }

  release(): void {
    this.inflight--;
    this.backend.wake();
  }
}

interface Waiter {
  resolve: () => void;
}

/** Per-backend state that survives swaps: the bounded wait queue for full endpoints. */
export class BackendState {
  readonly id: string;
  readonly waiters: Waiter[] = [];
  /** In panic routing (no healthy endpoint) since the last pick; logged on each change only. */
  panicking = false;
  constructor(id: string) {
    this.id = id;
  }

  /** Wakes the oldest waiter, which then tries to pick an endpoint again. */
  wake(): void {
    const w = this.waiters.shift();
    if (w) w.resolve();
  }

  /**
   * Waits for a release or the timeout. Resolves true when woken, false on timeout or abort.
   * Callers check `waiters.length < maxQueue` first.
   */
  wait(timeoutMs: number, signal: AbortSignal): Promise<boolean> {
    return new Promise((resolve) => {
      const waiter: Waiter = {
        resolve: () => {
          clearTimeout(timer);
          signal.removeEventListener('abort', onAbort);
          resolve(true);
        },
      };
      const drop = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        signal.removeEventListener('abort', onAbort);
        resolve(false);
      };
      const onAbort = () => {
        clearTimeout(timer);
        drop();
      };
      const timer = setTimeout(drop, timeoutMs);
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }
}

export interface EndpointStatus {
  id: string;
  url: string;
  weight: number;
  ready: boolean;
  healthy: boolean;
  activeChecksPassing: boolean;
  ejectedForMs: number;
  inflight: number;
  /** Its responses carry X-Gpugate-Version: another gpugate (a gateway chain). */
  gateway: boolean;
  load: { waiting: number; running: number; kvCacheUsage: number; ageMs: number } | null;
}

/** The last scraped model-server load of an endpoint, with its age; null before the first scrape. */
export function loadView(e: EndpointState, now: number): EndpointStatus['load'] {
  return e.load
    ? {
        waiting: e.load.waiting,
        running: e.load.running,
        kvCacheUsage: e.load.kvCacheUsage,
        ageMs: now - e.load.at,
      }
    : null;
}

/** Owns every EndpointState and BackendState; reuses them across snapshots. */
export class UpstreamRegistry {
  readonly #endpoints = new Map<string, EndpointState>();
  readonly #backends = new Map<string, BackendState>();
  /** How many live runtimes reference each endpoint. */
  readonly #refs = new Map<string, number>();

  backendState(id: string): BackendState {
    let b = this.#backends.get(id);
    if (!b) {
      b = new BackendState(id);
      this.#backends.set(id, b);
    }
    return b;
  }

  /** The endpoint state for this backend endpoint, new or reused when id, URL and connect timeout match. */
  endpointState(backend: Backend, endpoint: Endpoint): EndpointState {
    const key = `${backend.id}\u0000${endpoint.id}\u0000${endpoint.url}\u0000${backend.timeouts.connectMs}`;
    let e = this.#endpoints.get(key);
    if (!e) {
      e = new EndpointState(key, this.backendState(backend.id), endpoint, backend.timeouts.connectMs);
      this.#endpoints.set(key, e);
    }
    return e;
  }

  /** A runtime went live: it references these endpoints. */
  retain(endpoints: Iterable<EndpointState>): void {
    for (const e of endpoints) this.#refs.set(e.key, (this.#refs.get(e.key) ?? 0) + 1);
  }

  /**
   * A runtime was replaced and its last request finished. Endpoints no live runtime references are
   * closed (their pools wait for nothing: every request that used them has ended).
   */
  releaseRuntime(endpoints: Iterable<EndpointState>): Promise<void>[] {
    const closing: Promise<void>[] = [];
    for (const e of endpoints) {
      const n = (this.#refs.get(e.key) ?? 1) - 1;
      if (n > 0) {
        this.#refs.set(e.key, n);
        continue;
      }
      this.#refs.delete(e.key);
      this.#endpoints.delete(e.key);
      e.closed = true;
      closing.push(e.pool.close().catch(() => undefined));
    }
    return closing;
  }

  /**
   * In-flight requests per backend over every live endpoint: also those only a replaced runtime still
   * uses (a request that started before a swap removed its endpoint or backend) until it ends.
   */
  *inflight(): Iterable<[string, number]> {
    const sums = new Map<string, number>();
    for (const e of this.#endpoints.values())
      sums.set(e.backendId, (sums.get(e.backendId) ?? 0) + e.inflight);
    yield* sums;
  }

  *queueDepths(): Iterable<[string, number]> {
    for (const [id, b] of this.#backends) yield [id, b.waiters.length];
  }

  /** What an operator (and the operator's status) wants to know about each endpoint. */
  static describe(e: EndpointState, now: number): EndpointStatus {
    return {
      id: e.id,
      url: e.url,
      weight: e.weight,
      ready: e.ready,
      healthy: e.healthy(now),
      activeChecksPassing: e.activeHealthy,
      ejectedForMs: Math.max(0, e.ejectedUntil - now),
      inflight: e.inflight,
      gateway: e.gateway,
      load: loadView(e, now),
    };
  }

  /** Every endpoint state currently known (for shutdown). */
  all(): EndpointState[] {
    return [...this.#endpoints.values()];
  }

  async closeAll(): Promise<void> {
    const all = this.all();
    this.#endpoints.clear();
    this.#refs.clear();
    await Promise.all(
      all.map((e) => {
        e.closed = true;
        return e.pool.close().catch(() => undefined);
      }),
    );
  }
}
