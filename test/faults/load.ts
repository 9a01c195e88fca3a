// Steady load from a real HTTP client and the reconciliation every fault case ends with.
//
//   const load = steadyLoad({ url: plane.url, secret, concurrency: 6 });
//   ... inject a fault, wait for it to matter ...
//   const seen = await load.stop();
//   const r = await reconcile(pool, seen, sims);   // lost, doubled, phantom, duplicated upstream
//
// Every loop here is bounded in count and time (maxRequests, maxMs), so a gateway that hangs fails the
// test instead of holding the machine. Requests carry their own X-Request-Id, which the gateway uses as
// the usage event's request id and forwards to the backend: that is what lets a test match what the
// client saw, what the backends received and what Postgres stored, request by request.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { Agent, request } from 'undici';
import type { Simulator } from '../fixtures/gpusim/index.ts';
import { chat } from '../dataplane/harness.ts';

/** Soak runs (`make soak`) stretch every fault window; `make test` runs the short variants. */
export const SOAK = process.env.GPUGATE_SOAK === '1';

export interface Outcome {
  id: string;
  /** 0: no response (connection refused, reset, or the client's own timeout). */
  status: number;
  startedAt: number;
  ms: number;
  tenant: string;
  /** Of a non-2xx answer: its Retry-After header and the JSON error's `code`, when present. */
  retryAfter?: string;
  errorCode?: string;
}

export interface LoadOptions {
  url: string;
  /** One Bearer secret per tenant label; workers are spread round robin over them. */
  secrets: Record<string, string>;
  concurrency: number;
  /** Hard bounds: the load stops by itself after either. */
  maxMs?: number;
  maxRequests?: number;
  /** Per-request bound so a hung gateway cannot stall a worker forever. */
  requestTimeoutMs?: number;
  body?: () => string;
  /** Pause between one worker's requests (open-ish loop); 0: closed loop. */
  thinkMs?: number;
}

export interface Load {
  outcomes: Outcome[];
  stop(): Promise<Outcome[]>;
  /** Waits for the load to end by its own bounds (maxRequests, maxMs). */
  done(): Promise<Outcome[]>;
  /** Resolves once `n` more requests have completed (bounded by maxWaitMs). */
  settle(n: number, maxWaitMs?: number): Promise<void>;
}

export function steadyLoad(opts: LoadOptions): Load {
  const outcomes: Outcome[] = [];
  const dispatcher = new Agent({ connections: opts.concurrency, pipelining: 1 });
  const tenants = Object.keys(opts.secrets);
  const deadline = Date.now() + (opts.maxMs ?? 60_000);
  const maxRequests = opts.maxRequests ?? 100_000;
  const requestTimeoutMs = opts.requestTimeoutMs ?? 15_000;
  let sent = 0;
  let running = true;
  const worker = async (w: number): Promise<void> => {
    const tenant = tenants[w % tenants.length]!;
    while (running && Date.now() < deadline && sent < maxRequests) {
      sent++;
      const id = randomUUID();
      const startedAt = Date.now();
      let status: number;
      let refusal: Pick<Outcome, 'retryAfter' | 'errorCode'> = {};
      try {
        const res = await request(opts.url + '/v1/chat/completions', {
          method: 'POST',
          dispatcher,
          body: opts.body?.() ?? chat('sim', { max_tokens: 4 }),
          headers: {
            'content-type': 'application/json',
            authorization: `Bearer ${opts.secrets[tenant]}`,
            'x-request-id': id,
          },
          headersTimeout: requestTimeoutMs,
          bodyTimeout: requestTimeoutMs,
        });
        const text = await res.body.text();
        status = res.statusCode;
        if (status >= 300) refusal = refusalOf(res.headers['retry-after'], text);
      } catch {
        status = 0;
      }
      outcomes.push({ id, status, startedAt, ms: Date.now() - startedAt, tenant, ...refusal });
      if (status === 0) await new Promise((r) => setTimeout(r, 20));
      else if (opts.thinkMs) await new Promise((r) => setTimeout(r, opts.thinkMs));
    }
  };
  const workers = Array.from({ length: opts.concurrency }, (_, i) => worker(i));
  return {
    outcomes,
    stop: async () => {
      running = false;
      await Promise.all(workers);
      await dispatcher.close();
      return outcomes;
    },
    done: async () => {
      await Promise.all(workers);
      await dispatcher.close();
      return outcomes;
    },
    settle: async (n, maxWaitMs = 15_000) => {
      const target = outcomes.length + n;
      const end = Date.now() + maxWaitMs;
      while (outcomes.length < target && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    },
  };
}

function refusalOf(
  retryAfter: string | string[] | undefined,
  body: string,
): Pick<Outcome, 'retryAfter' | 'errorCode'> {
  let errorCode: unknown;
  try {
    errorCode = (JSON.parse(body) as { error?: { code?: unknown } }).error?.code;
  } catch {
    // not JSON: the error shape is checked by the tests that need it
  }
  return {
    ...(typeof retryAfter === 'string' ? { retryAfter } : {}),
    ...(typeof errorCode === 'string' ? { errorCode } : {}),
  };
}

export function countByStatus(outcomes: Outcome[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const o of outcomes) out[o.status] = (out[o.status] ?? 0) + 1;
  return out;
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

export interface Reconciliation {
  served: number;
  /** Served (2xx) requests without a usage event. */
  lost: number;
  /** Request ids with more than one usage event. */
  doubled: number;
  /** Usage events with status 200 for requests the client did not see served. */
  phantom: number;
  /** Requests the gateway answered (any status) that have no event at all. */
  answeredWithoutEvent: number;
  /** Request ids that reached backends more than once (a retry that duplicated work). */
  duplicatedUpstream: number;
}

/** Matches the client's outcomes with the usage events in Postgres and the backends' request logs. */
export async function reconcile(
  pool: pg.Pool,
  outcomes: Outcome[],
  sims: Simulator[] = [],
): Promise<Reconciliation> {
  const ids = outcomes.map((o) => o.id);
  const { rows } = await pool.query<{ request_id: string; n: number; status: number }>(
    `SELECT request_id, count(*)::int AS n, max(status)::int AS status
       FROM usage_events WHERE request_id = ANY($1::text[]) GROUP BY request_id`,
    [ids],
  );
  const stored = new Map(rows.map((r) => [r.request_id, r]));
  const received = new Map<string, number>();
  for (const sim of sims)
    for (const r of recordedRequests(sim)) {
      const id = r.headers['x-request-id'];
      if (typeof id === 'string') received.set(id, (received.get(id) ?? 0) + 1);
    }
  const served = outcomes.filter((o) => o.status >= 200 && o.status < 300);
  const servedIds = new Set(served.map((o) => o.id));
  return {
    served: served.length,
    lost: served.filter((o) => !stored.has(o.id)).length,
    doubled: rows.filter((r) => r.n > 1).length,
    phantom: rows.filter((r) => r.status === 200 && !servedIds.has(r.request_id)).length,
    answeredWithoutEvent: outcomes.filter((o) => o.status !== 0 && !stored.has(o.id)).length,
    duplicatedUpstream: [...received.values()].filter((n) => n > 1).length,
  };
}

/** Every request the simulator received; throws when it kept fewer (its recordRequests was too small). */
export function recordedRequests(sim: Simulator): ReturnType<Simulator['requests']> {
  const recorded = sim.requests();
  const received = sim.stats().requests;
  if (recorded.length < received) {
    throw new Error(
      `simulator ${sim.name} kept ${recorded.length} of the ${received} requests it received: start it with a larger recordRequests`,
    );
  }
  return recorded;
}

/**
 * What the backends saw, by the tenant the gateway named (X-Gpugate-Tenant): the request ids of each
 * tenant's requests that reached any of `sims`, and how often each arrived.
 */
export function upstreamByTenant(
  sims: Simulator[],
  path = '/v1/chat/completions',
): Map<string, Map<string, number>> {
  const out = new Map<string, Map<string, number>>();
  for (const sim of sims)
    for (const r of recordedRequests(sim)) {
      if (r.path !== path) continue;
      const tenant = String(r.headers['x-gpugate-tenant'] ?? '');
      const id = String(r.headers['x-request-id'] ?? '');
      const ids = out.get(tenant) ?? new Map<string, number>();
      ids.set(id, (ids.get(id) ?? 0) + 1);
      out.set(tenant, ids);
    }
  return out;
}

/** Polls `check` every 20 ms for at most maxMs; returns whether it became true. */
export async function eventually(check: () => boolean | Promise<boolean>, maxMs: number): Promise<boolean> {
  const end = Date.now() + maxMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
}
