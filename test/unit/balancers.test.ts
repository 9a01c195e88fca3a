import { describe, expect, it } from 'vitest';
import {
  LeastRequestBalancer,
  QueueAwareBalancer,
  RoundRobinBalancer,
} from '../../dataplane/upstream/balancers.ts';
import { BackendState, type EndpointState } from '../../dataplane/upstream/endpoint.ts';

/** Balancers read only id, weight, inflight and load: plain objects stand in for pooled endpoints. */
function ep(id: string, weight = 1, inflight = 0): EndpointState {
  return { id, weight, inflight, load: null, backend: new BackendState('b') } as unknown as EndpointState;
}

describe('RoundRobinBalancer', () => {
  it('interleaves a 5:1:1 weighting smoothly, as nginx does', () => {
    const rr = new RoundRobinBalancer();
    const eps = [ep('a', 5), ep('b'), ep('c')];
    const seq = Array.from({ length: 7 }, () => rr.pick(eps).id).join('');
    expect(seq).toBe('aabacaa');
  });

  it('gives each endpoint its weighted share over many picks and stays fair when the set shrinks', () => {
    const rr = new RoundRobinBalancer();
    const eps = [ep('a', 3), ep('b', 2), ep('c', 1)];
    const counts: Record<string, number> = {};
    for (let i = 0; i < 600; i++) {
      const id = rr.pick(eps).id;
      counts[id] = (counts[id] ?? 0) + 1;
    }
    expect(counts).toEqual({ a: 300, b: 200, c: 100 });
    const two = [eps[0]!, eps[2]!];
    const sub: Record<string, number> = {};
    for (let i = 0; i < 400; i++) {
      const id = rr.pick(two).id;
      sub[id] = (sub[id] ?? 0) + 1;
    }
    expect(Math.abs(sub.a! - 300)).toBeLessThanOrEqual(3);
  });
});

describe('LeastRequestBalancer', () => {
  it('with two endpoints always takes the one with fewer requests in flight per weight', () => {
    const lr = new LeastRequestBalancer();
    const busy = ep('busy', 1, 5);
    const idle = ep('idle', 1, 1);
    for (let i = 0; i < 100; i++) expect(lr.pick([busy, idle]).id).toBe('idle');
    const heavy = ep('heavy', 10, 5); // (5+1)/10 < (1+1)/1
    for (let i = 0; i < 100; i++) expect(lr.pick([heavy, idle]).id).toBe('heavy');
  });

  it('never picks the most loaded of many endpoints (power of two choices)', () => {
    const lr = new LeastRequestBalancer();
    const eps = [ep('a', 1, 0), ep('b', 1, 1), ep('c', 1, 2), ep('d', 1, 9)];
    for (let i = 0; i < 500; i++) expect(lr.pick(eps).id).not.toBe('d');
  });
});

describe('QueueAwareBalancer', () => {
  it('prefers the endpoint whose model server has the shortest queue', () => {
    const qa = new QueueAwareBalancer(1000);
    const now = 10_000;
    const a = ep('a');
    const b = ep('b');
    a.load = { waiting: 8, running: 16, kvCacheUsage: 0.5, at: now, inflightAtScrape: 0 };
    b.load = { waiting: 0, running: 10, kvCacheUsage: 0.5, at: now, inflightAtScrape: 0 };
    for (let i = 0; i < 20; i++) expect(qa.pick([a, b], now).id).toBe('b');
  });

  it('counts requests sent since the scrape, so it does not herd onto one endpoint between scrapes', () => {
    const qa = new QueueAwareBalancer(1000);
    const now = 10_000;
    const a = ep('a');
    const b = ep('b');
    a.load = { waiting: 0, running: 4, kvCacheUsage: 0, at: now, inflightAtScrape: 0 };
    b.load = { waiting: 0, running: 2, kvCacheUsage: 0, at: now, inflightAtScrape: 0 };
    b.inflight = 5;
    expect(qa.pick([a, b], now).id).toBe('a');
  });

  it('avoids a nearly full KV cache', () => {
    const qa = new QueueAwareBalancer(1000);
    const a = ep('a');
    const b = ep('b');
    a.load = { waiting: 0, running: 2, kvCacheUsage: 0.99, at: 0, inflightAtScrape: 0 };
    b.load = { waiting: 0, running: 4, kvCacheUsage: 0.3, at: 0, inflightAtScrape: 0 };
    expect(qa.pick([a, b], 0).id).toBe('b');
  });

  it('falls back to least-request when any endpoint has stale metrics', () => {
    const qa = new QueueAwareBalancer(1000);
    const a = ep('a', 1, 0);
    const b = ep('b', 1, 7);
    a.load = { waiting: 50, running: 16, kvCacheUsage: 1, at: 0, inflightAtScrape: 0 };
    b.load = { waiting: 0, running: 0, kvCacheUsage: 0, at: 5000, inflightAtScrape: 0 };
    // a's metrics (at 0) are stale at 5000: in-flight decides, and a has none.
    for (let i = 0; i < 20; i++) expect(qa.pick([a, b], 5000).id).toBe('a');
  });
});
