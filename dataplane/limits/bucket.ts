// Token buckets refilled continuously: `capacity` per minute, starting full. Tokens may go below
// zero: a tokens-per-minute bucket is charged an estimate at admission and corrected by the actual
// usage when the response ends, and an underestimate becomes debt that later requests wait out.
export const MINUTE_MS = 60_000;

export class TokenBucket {
  capacity: number;
  tokens: number;
  #ratePerMs: number;
  #updatedAt: number;

  constructor(capacity: number, now: number) {
    this.capacity = capacity;
    this.tokens = capacity;
    this.#ratePerMs = capacity / MINUTE_MS;
    this.#updatedAt = now;
  }

  #refill(now: number): void {
    const elapsed = now - this.#updatedAt;
    if (elapsed > 0) {
      this.tokens = Math.min(this.capacity, this.tokens + elapsed * this.#ratePerMs);
      this.#updatedAt = now;
    }
  }

  /** A new per-minute limit, keeping what was already spent (never more than the new capacity). */
  resize(capacity: number, now: number): void {
    if (capacity === this.capacity) return;
    this.#refill(now);
    this.capacity = capacity;
    this.#ratePerMs = capacity / MINUTE_MS;
    this.tokens = Math.min(this.tokens, capacity);
  }

  /**
   * Milliseconds until `n` could be taken; 0 means it can be now. A request larger than the whole
   * bucket needs a full bucket (then goes into debt) rather than never passing.
   */
  waitFor(n: number, now: number): number {
    this.#refill(now);
    const need = Math.min(n, this.capacity);
    if (this.tokens >= need) return 0;
    return Math.ceil((need - this.tokens) / this.#ratePerMs);
  }

  take(n: number, now: number): void {
    this.#refill(now);
    this.tokens -= n;
  }

  /** Gives back (or, negative, charges) tokens after the fact. */
  adjust(n: number, now: number): void {
    this.#refill(now);
    this.tokens = Math.min(this.capacity, this.tokens + n);
  }

  remaining(now: number): number {
    this.#refill(now);
    return Math.max(0, Math.floor(this.tokens));
  }

  /** Milliseconds until the bucket is full again. */
  msUntilFull(now: number): number {
    this.#refill(now);
    return this.tokens >= this.capacity ? 0 : Math.ceil((this.capacity - this.tokens) / this.#ratePerMs);
  }

  /** True when the bucket is full, so forgetting it changes nothing. */
  idle(now: number): boolean {
    this.#refill(now);
    return this.tokens >= this.capacity;
  }
}
