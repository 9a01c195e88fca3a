// The operator's work queue: de-duplication, never the same key twice at once, per-key backoff.
import { describe, expect, it } from 'vitest';
import { WorkQueue } from '../../operator/controllers/queue.ts';

describe('WorkQueue', () => {
  it('holds a key once however often it is added', async () => {
    const q = new WorkQueue();
    q.add('a');
    q.add('b');
    q.add('a');
    expect(q.depth).toBe(2);
    expect(await q.get()).toBe('a');
    expect(await q.get()).toBe('b');
    q.shutdown();
  });

  it('a key added while in process comes back after done(), not before', async () => {
    const q = new WorkQueue();
    q.add('a');
    const key = (await q.get())!;
    q.add('a');
    expect(q.depth).toBe(0);
    q.done(key);
    expect(q.depth).toBe(1);
    expect(await q.get()).toBe('a');
    q.shutdown();
  });

  it('backs off per key exponentially and forgets on success', () => {
    const q = new WorkQueue({ baseDelayMs: 10, maxDelayMs: 50 });
    expect([1, 2, 3, 4].map(() => q.addRateLimited('a'))).toEqual([10, 20, 40, 50]);
    expect(q.addRateLimited('b')).toBe(10);
    q.forget('a');
    expect(q.addRateLimited('a')).toBe(10);
    q.shutdown();
  });

  it('get() waits for a key and returns null after shutdown', async () => {
    const q = new WorkQueue();
    const waiting = q.get();
    setTimeout(() => q.add('x'), 5);
    expect(await waiting).toBe('x');
    const closed = q.get();
    q.shutdown();
    expect(await closed).toBeNull();
  });
});

describe('WorkQueue lanes', () => {
  it('hands out every spec key before any status key, each lane in order', async () => {
    const q = new WorkQueue();
    q.add('s1', 'status');
    q.add('a');
    q.add('s2', 'status');
    q.add('b');
    expect([q.laneDepth('spec'), q.laneDepth('status')]).toEqual([2, 2]);
    const order = [];
    for (let i = 0; i < 4; i++) order.push(await q.get());
    expect(order).toEqual(['a', 'b', 's1', 's2']);
    q.shutdown();
  });

  it('a status key added to the spec lane moves there once; a spec key is not demoted', async () => {
    const q = new WorkQueue();
    q.add('x', 'status');
    q.add('y', 'status');
    q.add('y');
    q.add('z');
    q.add('z', 'status');
    expect(q.depth).toBe(3);
    const order = [];
    for (let i = 0; i < 3; i++) order.push(await q.get());
    expect(order).toEqual(['y', 'z', 'x']);
    q.shutdown();
  });

  it('a key added while in process comes back in the better of the lanes it was added to', async () => {
    const q = new WorkQueue();
    q.add('k');
    const key = (await q.get())!;
    q.add('k', 'status');
    q.add('k');
    q.add('k', 'status');
    q.add('other', 'status');
    q.done(key);
    expect(q.laneDepth('spec')).toBe(1);
    expect(await q.get()).toBe('k');
    q.shutdown();
  });
});
