// The operator's snapshot publisher: how many compiles a stream of changes costs. Time is an injected
// clock plus vitest's fake timers, so the counts are exact on any machine; compiling "takes" the time the
// test's input() adds to the clock.
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createPublisher } from '../../operator/push/publisher.ts';

function publisher(compileMs: number) {
  let clock = 0;
  let compiles = 0;
  const p = createPublisher({
    logger: pino({ level: 'silent' }),
    registry: new Registry(),
    input() {
      compiles++;
      clock += compileMs;
      return { gpuBackends: [], tenants: [], apiKeys: [], secrets: [] };
    },
    targets: () => [],
    token: () => null,
    isLeader: () => false,
    onProblems() {},
    now: () => clock,
  });
  return {
    p,
    compiles: () => compiles,
    /** Advances both the fake timers and the clock. */
    advance(ms: number) {
      for (let i = 0; i < ms; i++) {
        clock += 1;
        vi.advanceTimersByTime(1);
      }
    },
  };
}

describe('publisher compile scheduling', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('a burst of changes within the debounce is one compile', () => {
    const t = publisher(5);
    for (let i = 0; i < 1000; i++) t.p.schedule();
    expect(t.p.pending()).toBe(true);
    t.advance(30);
    expect(t.compiles()).toBe(1);
    expect(t.p.pending()).toBe(false);
    t.p.stop();
  });

  it('a stream of changes waits at least the last compile duration between compiles, not only the debounce', () => {
    // A change every 10 ms for 4 s, compiles of 200 ms (on the injected clock; the fake timers do not move
    // while compiling): spaced by the debounce alone that would be a compile every 30 ms, 133 in all; spaced
    // by the last compile's duration it is one every 200 ms.
    const t = publisher(200);
    for (let ms = 0; ms < 4000; ms += 10) {
      t.p.schedule();
      t.advance(10);
    }
    t.advance(1000);
    expect(t.compiles()).toBeGreaterThanOrEqual(15);
    expect(t.compiles()).toBeLessThanOrEqual(21);
    t.p.stop();
  });

  it('after a quiet spell the next change waits only the debounce', () => {
    const t = publisher(200);
    t.p.schedule();
    t.advance(30);
    expect(t.compiles()).toBe(1);
    t.advance(1000);
    t.p.schedule();
    t.advance(29);
    expect(t.compiles()).toBe(1);
    t.advance(1);
    expect(t.compiles()).toBe(2);
    t.p.stop();
  });
});
