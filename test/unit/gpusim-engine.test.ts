// The simulator's timing model, on a manual clock: every time below is simulated milliseconds, an output
// of the model, not a wall-clock measurement.
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../fixtures/gpusim/clock.ts';
import {
  BatchEngine,
  SequenceTooLongError,
  stepDurationMs,
  type EngineParams,
} from '../fixtures/gpusim/engine.ts';

const base: EngineParams = {
  maxBatch: 8,
  kvCacheTokens: 100_000,
  prefillMsPerToken: 1,
  decodeMsPerToken: 10,
  batchSlowdown: 0,
  speed: 1,
};

function engineWith(params: Partial<EngineParams> = {}): { engine: BatchEngine; clock: ManualClock } {
  const clock = new ManualClock();
  return { engine: new BatchEngine({ ...base, ...params }, clock), clock };
}

function ttft(seq: { firstTokenAt: number | undefined; arrivedAt: number }): number {
  return seq.firstTokenAt! - seq.arrivedAt;
}

describe('gpusim engine timing model', () => {
  it('time to first token is prefill of the prompt plus one decode step, so it grows with prompt length', () => {
    const short = engineWith();
    const s = short.engine.submit(100, 4);
    short.clock.runUntilIdle();
    const long = engineWith();
    const l = long.engine.submit(400, 4);
    long.clock.runUntilIdle();
    expect(ttft(s)).toBe(100 + 10);
    expect(ttft(l)).toBe(400 + 10);
  });

  it('time to first token grows with the waiting queue when the batch is full', () => {
    const { engine, clock } = engineWith({ maxBatch: 1, prefillMsPerToken: 0 });
    const seqs = [0, 1, 2, 3].map(() => engine.submit(10, 5));
    expect(engine.stats()).toMatchObject({ running: 1, waiting: 3 });
    clock.runUntilIdle();
    // Each sequence waits for the 5 steps of every one ahead of it.
    expect(seqs.map(ttft)).toEqual([10, 60, 110, 160]);
  });

  it('time per output token grows with batch size', () => {
    const { engine, clock } = engineWith({ prefillMsPerToken: 0, batchSlowdown: 0.5 });
    const alone = engine.submit(10, 3);
    clock.runUntilIdle();
    const batch = [0, 1, 2, 3].map(() => engine.submit(10, 3));
    clock.runUntilIdle();
    const perToken = (seq: typeof alone): number =>
      (seq.finishedAt! - seq.firstTokenAt!) / (seq.outputTokens - 1);
    expect(perToken(alone)).toBe(10);
    expect(perToken(batch[0]!)).toBe(10 * (1 + 0.5 * 3));
    expect(stepDurationMs(base, 0, 4)).toBe(10);
  });

  it('admits only what fits the KV-cache budget (prompt + completion), even with batch slots free', () => {
    const { engine, clock } = engineWith({ kvCacheTokens: 100, prefillMsPerToken: 0 });
    const seqs = [0, 1, 2].map(() => engine.submit(30, 10));
    // The first started a step alone; the others join at the next step boundary, as far as the budget goes.
    expect(engine.stats()).toMatchObject({ running: 1, waiting: 2 });
    clock.advance(10);
    expect(engine.stats()).toMatchObject({ running: 2, waiting: 1, kvUsedTokens: 30 + 1 + 30 });
    expect(engine.stats().kvCacheUsage).toBeCloseTo(0.61);
    clock.runUntilIdle();
    expect(seqs[2]!.admittedAt).toBe(seqs[0]!.finishedAt);
    expect(engine.stats()).toMatchObject({ running: 0, waiting: 0, kvUsedTokens: 0, finishedTotal: 3 });
  });

  it('admits strictly in arrival order: a head that does not fit blocks smaller requests behind it', () => {
    const { engine, clock } = engineWith({ kvCacheTokens: 100, prefillMsPerToken: 0 });
    const a = engine.submit(50, 10);
    const big = engine.submit(50, 10);
    const small = engine.submit(5, 5);
    expect(engine.stats()).toMatchObject({ running: 1, waiting: 2 });
    clock.runUntilIdle();
    expect(big.admittedAt).toBe(a.finishedAt);
    expect(small.admittedAt).toBe(a.finishedAt);
    expect(big.id).toBeLessThan(small.id);
  });

  it('a speed of 0.5 makes every duration exactly twice as long', () => {
    const run = (speed: number): number[] => {
      const { engine, clock } = engineWith({ speed, maxBatch: 2, batchSlowdown: 0.1 });
      const seqs = [0, 1, 2].map((i) => engine.submit(20 * (i + 1), 4));
      clock.runUntilIdle();
      return seqs.flatMap((s) => [ttft(s), s.finishedAt!]);
    };
    expect(run(0.5)).toEqual(run(1).map((t) => t * 2));
  });

  it('with zero per-token costs a request completes inside submit() without any timer', () => {
    const { engine, clock } = engineWith({ prefillMsPerToken: 0, decodeMsPerToken: 0 });
    const tokens: number[] = [];
    const seq = engine.submit(10, 6, { onToken: (_s, i) => tokens.push(i) });
    expect(seq.state).toBe('finished');
    expect(tokens).toEqual([0, 1, 2, 3, 4, 5]);
    expect(clock.pendingTimers).toBe(0);
    expect(engine.stats()).toMatchObject({ generationTokensTotal: 6, promptTokensTotal: 10, steps: 6 });
  });

  it('cancelling a running sequence frees its KV reservation and admits the next one', () => {
    const { engine, clock } = engineWith({ kvCacheTokens: 50, prefillMsPerToken: 0 });
    const first = engine.submit(30, 10);
    const second = engine.submit(30, 10);
    clock.advance(10);
    expect(second.state).toBe('waiting');
    engine.cancel(first);
    clock.advance(10); // the step in flight ends, then the freed room is used
    expect(first.state).toBe('cancelled');
    expect(second.state).toBe('running');
    expect(engine.stats().cancelledTotal).toBe(1);
  });

  it('refuses a sequence larger than the whole KV budget instead of queueing it forever', () => {
    const { engine } = engineWith({ kvCacheTokens: 64 });
    expect(() => engine.submit(60, 10)).toThrow(SequenceTooLongError);
    expect(() => engine.submit(60, 10)).toThrow(/70 tokens .* budget is 64/);
  });

  it('delivers tokens in order and calls onFinish once, after the last token', () => {
    const { engine, clock } = engineWith({ maxBatch: 2 });
    const events: string[] = [];
    for (const name of ['a', 'b', 'c'])
      engine.submit(5, 3, {
        onToken: (_s, i) => events.push(`${name}${i}`),
        onFinish: () => events.push(`${name}!`),
      });
    clock.runUntilIdle();
    for (const name of ['a', 'b', 'c']) {
      const mine = events.filter((e) => e.startsWith(name));
      expect(mine).toEqual([`${name}0`, `${name}1`, `${name}2`, `${name}!`]);
    }
    expect(events.indexOf('c0')).toBeGreaterThan(events.indexOf('a!'));
  });
});
