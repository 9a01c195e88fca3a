// Rate-limit state that outlives snapshots: one entry per key and per tenant that has a limit,
// created on its first request and kept across swaps while the key or tenant exists, plus
// per-client-address buckets for public routes and failed authentication. Per replica, every
// configured limit is divided by the live replica count from the snapshot.
import type { RateLimits } from '../config/snapshot.ts';
import { TokenBucket } from './bucket.ts';

/** What this replica enforces for one subject; 0 means unlimited. */
export interface ReplicaLimits {
  requestsPerMinute: number;
  tokensPerMinute: number;
  concurrentRequests: number;
}

/**
 * A cluster-wide limit as this replica's share. Rates may be fractional (a bucket refills
 * continuously) but hold at least one request; concurrency is rounded down, at least one.
 */
export function replicaLimits(limits: RateLimits, replicas: number): ReplicaLimits {
  const share = (n: number | undefined, whole: boolean): number => {
    if (!n || n <= 0) return 0;
    const s = n / Math.max(1, replicas);
    return Math.max(1, whole ? Math.floor(s) : s);
  };
  return {
    requestsPerMinute: share(limits.requestsPerMinute, false),
    tokensPerMinute: share(limits.tokensPerMinute, false),
    concurrentRequests: share(limits.concurrentRequests, true),
  };
}

export function unlimited(l: ReplicaLimits): boolean {
  return l.requestsPerMinute === 0 && l.tokensPerMinute === 0 && l.concurrentRequests === 0;
}

export class LimitState {
  requests: TokenBucket | null = null;
  tokens: TokenBucket | null = null;
  concurrent = 0;
  inflight = 0;

  /** Applies (possibly changed) limits, keeping what has been spent. */
  configure(l: ReplicaLimits, now: number): void {
    this.requests = bucketFor(this.requests, l.requestsPerMinute, now);
    this.tokens = bucketFor(this.tokens, l.tokensPerMinute, now);
    this.concurrent = l.concurrentRequests;
  }
}

function bucketFor(current: TokenBucket | null, perMinute: number, now: number): TokenBucket | null {
  if (perMinute === 0) return null;
  if (current === null) return new TokenBucket(perMinute, now);
  current.resize(perMinute, now);
  return current;
}

/** Limit states by subject (`key:<id>`, `tenant:<id>`). */
export class LimitStore {
  readonly #states = new Map<string, LimitState>();

  /** The state of a subject with these limits, created on first use. */
  state(subject: string, l: ReplicaLimits, now: number): LimitState {
    let s = this.#states.get(subject);
    if (!s) {
      s = new LimitState();
      this.#states.set(subject, s);
    }
    s.configure(l, now);
    return s;
  }

  /** The state of a subject if it has one (nothing is created: for the admin views). */
  peek(subject: string): LimitState | undefined {
    return this.#states.get(subject);
  }

  /** Drops the state of subjects that left the snapshot; in-flight counts of the rest survive. */
  retain(keep: (subject: string) => boolean): void {
    for (const [subject, s] of this.#states)
      if (s.inflight === 0 && !keep(subject)) this.#states.delete(subject);
  }

  get size(): number {
    return this.#states.size;
  }
}

/**
 * Buckets per client address, bounded: beyond maxEntries, full (idle) buckets are dropped first,
 * then the oldest. Dropping a bucket only forgives that address.
 */
export class AddressBuckets {
  readonly #buckets = new Map<string, TokenBucket>();
  readonly #maxEntries: number;

  constructor(maxEntries = 100_000) {
    this.#maxEntries = maxEntries;
  }

  /** Milliseconds this address must wait before spending one more; 0 if it may. Does not spend. */
  waitFor(address: string, perMinute: number, now: number): number {
    const b = this.#buckets.get(address);
    if (!b) return 0;
    b.resize(perMinute, now);
    return b.waitFor(1, now);
  }

  spend(address: string, perMinute: number, now: number): void {
    let b = this.#buckets.get(address);
    if (!b) {
      if (this.#buckets.size >= this.#maxEntries) this.#evict(now);
      b = new TokenBucket(perMinute, now);
      this.#buckets.set(address, b);
    } else b.resize(perMinute, now);
    b.take(1, now);
  }

  #evict(now: number): void {
    for (const [address, b] of this.#buckets) if (b.idle(now)) this.#buckets.delete(address);
    while (this.#buckets.size >= this.#maxEntries) {
      const oldest = this.#buckets.keys().next().value as string;
      this.#buckets.delete(oldest);
    }
  }

  get size(): number {
    return this.#buckets.size;
  }
}
