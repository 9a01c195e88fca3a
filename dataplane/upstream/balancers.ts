// Balancing policies. Each picks one endpoint from the candidates the caller already filtered
// (healthy, below maxInflightPerEndpoint, not tried before by this request).
import type { BalancingPolicy } from '../config/snapshot.ts';
import type { EndpointState } from './endpoint.ts';

export interface Balancer {
  readonly policy: BalancingPolicy;
  pick(candidates: readonly EndpointState[], now: number): EndpointState;
}

/**
 * Smooth weighted round robin (as in nginx): every pick adds each candidate's weight to its
 * current value, takes the largest and subtracts the total from it. Spreads a 5:1:1 weighting as
 * a,a,b,a,c,a,a rather than a,a,a,a,a,b,c, and stays fair when the candidate set shrinks.
 */
export class RoundRobinBalancer implements Balancer {
  readonly policy = 'RoundRobin' as const;
  readonly #current = new Map<EndpointState, number>();

  pick(candidates: readonly EndpointState[]): EndpointState {
    let best = candidates[0] as EndpointState;
    if (candidates.length === 1) return best;
    let bestValue = -Infinity;
    let total = 0;
    for (const e of candidates) {
      const value = (this.#current.get(e) ?? 0) + e.weight;
      this.#current.set(e, value);
      total += e.weight;
      if (value > bestValue) {
        bestValue = value;
        best = e;
      }
    }
    this.#current.set(best, bestValue - total);
    return best;
  }
}

function randomIndex(n: number): number {
  return Math.floor(Math.random() * n);
}

/** Power of two choices on in-flight ÷ weight: near-best choice without herding on one endpoint. */
export class LeastRequestBalancer implements Balancer {
  readonly policy: BalancingPolicy = 'LeastRequest';

  pick(candidates: readonly EndpointState[]): EndpointState {
    const n = candidates.length;
    if (n === 1) return candidates[0] as EndpointState;
    const i = randomIndex(n);
    let j = randomIndex(n - 1);
    if (j >= i) j++;
    const a = candidates[i] as EndpointState;
    const b = candidates[j] as EndpointState;
    return (a.inflight + 1) / a.weight <= (b.inflight + 1) / b.weight ? a : b;
  }
}

/**
 * Scores endpoints by the model server's own queue (scraped vLLM/TGI/SGLang metrics) plus what
 * this replica sent since the scrape, and takes the lowest. Waiting requests weigh more than
 * running ones (they have not even started prefill), and a nearly full KV cache means preemption
 * soon. When an endpoint's metrics are stale the whole pick falls back to LeastRequest, so one
 * silent scraper never skews the choice.
 */
export class QueueAwareBalancer implements Balancer {
  readonly policy = 'QueueAware' as const;
  readonly #fallback = new LeastRequestBalancer();
  readonly #staleAfterMs: number;

  constructor(staleAfterMs: number) {
    this.#staleAfterMs = staleAfterMs;
  }

  pick(candidates: readonly EndpointState[], now: number): EndpointState {
    if (candidates.length === 1) return candidates[0] as EndpointState;
    let best: EndpointState | null = null;
    let bestScore = Infinity;
    for (const e of candidates) {
      const load = e.load;
      if (load === null || now - load.at > this.#staleAfterMs) return this.#fallback.pick(candidates);
      const score = queueScore(e, load.waiting, load.running, load.kvCacheUsage, load.inflightAtScrape);
      if (score < bestScore || (score === bestScore && Math.random() < 0.5)) {
        bestScore = score;
        best = e;
      }
    }
    return best as EndpointState;
  }
}

export function queueScore(
  e: EndpointState,
  waiting: number,
  running: number,
  kvCacheUsage: number,
  inflightAtScrape: number,
): number {
  const sentSinceScrape = Math.max(0, e.inflight - inflightAtScrape);
  const kvPressure = kvCacheUsage > 0.9 ? (kvCacheUsage - 0.9) * 40 : 0;
  return (3 * waiting + running + sentSinceScrape + kvPressure) / e.weight;
}

export function createBalancer(policy: BalancingPolicy, staleAfterMs: number): Balancer {
  switch (policy) {
    case 'RoundRobin':
      return new RoundRobinBalancer();
    case 'LeastRequest':
      return new LeastRequestBalancer();
    case 'QueueAware':
      return new QueueAwareBalancer(staleAfterMs);
  }
}
