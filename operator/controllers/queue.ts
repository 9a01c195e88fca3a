// A de-duplicating, rate-limited work queue of keys (after client-go's workqueue). A key added while
// queued is not added twice; a key added while being processed is queued again once the worker is
// done (never processed twice at the same time); failed keys come back after an exponential per-key
// backoff that resets when the key succeeds.
//
// Two lanes: `spec` for work that can change what the data planes get (an object added or edited, a
// child or key Secret to create, retries) and `status` for status-only refreshes (a compile's problems
// changed, a Tenant's key count). A worker takes the spec lane first, so a new ApiKey never waits behind
// thousands of status writes of a catch-up; a key added to the spec lane while waiting in the status
// lane moves over. Each lane is FIFO.
export type Lane = 'spec' | 'status';

export interface QueueOptions {
  baseDelayMs?: number;
  maxDelayMs?: number;
}

export class WorkQueue {
  // Insertion-ordered sets: FIFO with O(1) removal when a key moves from the status lane to the spec lane.
  private readonly lanes: Record<Lane, Set<string>> = { spec: new Set(), status: new Set() };
  private readonly processing = new Set<string>();
  private readonly dirty = new Map<string, Lane>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private waiters: (() => void)[] = [];
  private closed = false;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;

  constructor(options: QueueOptions = {}) {
    this.baseDelayMs = options.baseDelayMs ?? 50;
    this.maxDelayMs = options.maxDelayMs ?? 60_000;
  }

  get depth(): number {
    return this.lanes.spec.size + this.lanes.status.size;
  }

  /** Keys waiting in one lane. */
  laneDepth(lane: Lane): number {
    return this.lanes[lane].size;
  }

  add(key: string, lane: Lane = 'spec'): void {
    if (this.closed) return;
    if (this.processing.has(key)) {
      if (this.dirty.get(key) !== 'spec') this.dirty.set(key, lane);
      return;
    }
    if (this.lanes.spec.has(key)) return;
    if (this.lanes.status.has(key)) {
      if (lane === 'status') return;
      this.lanes.status.delete(key);
    }
    this.lanes[lane].add(key);
    this.waiters.shift()?.();
  }

  addAfter(key: string, delayMs: number, lane: Lane = 'spec'): void {
    if (this.closed) return;
    if (delayMs <= 0) return this.add(key, lane);
    const existing = this.timers.get(key);
    if (existing) clearTimeout(existing);
    this.timers.set(
      key,
      setTimeout(() => {
        this.timers.delete(key);
        this.add(key, lane);
      }, delayMs),
    );
  }

  /** Queues the key again after its next backoff step; returns the delay. */
  addRateLimited(key: string): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    const delay = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** n);
    this.addAfter(key, delay);
    return delay;
  }

  forget(key: string): void {
    this.failures.delete(key);
  }

  /** The next key, or null once the queue is shut down. Call done(key) when finished with it. */
  async get(): Promise<string | null> {
    while (this.depth === 0) {
      if (this.closed) return null;
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    const lane = this.lanes.spec.size > 0 ? this.lanes.spec : this.lanes.status;
    const key = lane.values().next().value as string;
    lane.delete(key);
    this.processing.add(key);
    return key;
  }

  done(key: string): void {
    this.processing.delete(key);
    const lane = this.dirty.get(key);
    if (lane) {
      this.dirty.delete(key);
      this.add(key, lane);
    }
  }

  shutdown(): void {
    this.closed = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    for (const w of this.waiters.splice(0)) w();
  }
}
