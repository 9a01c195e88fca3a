// The fleet view: every data-plane target's admin views fetched in parallel and merged, with the
// disagreements an on-call engineer needs flagged (a replica on another revision than the operator's,
// an endpoint healthy on one replica and not on another), targets that could not be reached named,
// and endpoints that are themselves gpugate gateways followed to their own admin API when one is
// configured for them (one level: a chained gateway's view is not followed further).
import type { BackendView, EndpointHealth } from '../../dataplane/admin/views.ts';

export interface AdminTarget {
  /** How the target is named in the output (pod name, URL). */
  name: string;
  /** The admin port's base URL. */
  adminUrl: string;
  token: string;
}

export interface ReplicaInfo {
  target: string;
  reachable: boolean;
  error: string | null;
  replica: string | null;
  version: string | null;
  revision: string | null;
  snapshotAgeMs: number | null;
  uptimeMs: number | null;
}

export interface AggregatedEndpoint {
  id: string;
  url: string;
  source: string;
  gateway: boolean;
  /** State per reachable target name. */
  states: Record<string, { state: EndpointHealth; reason: string | null; inflight: number }>;
  /** For a gateway endpoint: its own fleet's backends, or why they could not be read. */
  chain: {
    adminUrl: string | null;
    reachable: boolean;
    error: string | null;
    backends: BackendView[];
  } | null;
}

export interface AggregatedBackend {
  id: string;
  policy: string;
  endpoints: AggregatedEndpoint[];
}

export type Disagreement =
  | { kind: 'revision'; target: string; revision: string | null; expected: string }
  | { kind: 'endpoint_state'; backend: string; endpoint: string; states: Record<string, EndpointHealth> }
  | { kind: 'unreachable'; target: string; error: string };

export interface FleetStatus {
  at: string;
  /** The revision the operator serves; null when unknown (the CLI aggregating by itself). */
  expectedRevision: string | null;
  replicas: ReplicaInfo[];
  backends: AggregatedBackend[];
  disagreements: Disagreement[];
}

export interface AggregateOptions {
  targets: AdminTarget[];
  expectedRevision: string | null;
  /** Admin API of gateways that are endpoints of our backends, by endpoint URL (or its origin). */
  chains?: Record<string, { adminUrl: string; token: string }>;
  timeoutMs?: number;
}

async function getJson(url: string, token: string, timeoutMs: number): Promise<unknown> {
  const res = await fetch(url, {
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(timeoutMs),
  });
  if (!res.ok) {
    await res.body?.cancel();
    throw new Error(`${url} answered ${res.status}`);
  }
  return res.json();
}

function message(err: unknown): string {
  if (err instanceof Error)
    return err.cause instanceof Error ? `${err.message}: ${err.cause.message}` : err.message;
  return String(err);
}

interface InfoDoc {
  replica: string;
  version: string;
  uptimeMs: number;
  snapshot: { revision: string; ageMs: number | null } | null;
}

export async function aggregateFleet(opts: AggregateOptions): Promise<FleetStatus> {
  const timeoutMs = opts.timeoutMs ?? 3000;
  const fetched = await Promise.all(
    opts.targets.map(async (t) => {
      try {
        const [info, backends] = await Promise.all([
          getJson(`${t.adminUrl}/admin/info`, t.token, timeoutMs) as Promise<InfoDoc>,
          getJson(`${t.adminUrl}/admin/backends`, t.token, timeoutMs) as Promise<{ backends: BackendView[] }>,
        ]);
        return { target: t, info, backends: backends.backends, error: null };
      } catch (err) {
        return { target: t, info: null, backends: [] as BackendView[], error: message(err) };
      }
    }),
  );
  const replicas: ReplicaInfo[] = fetched.map((f) => ({
    target: f.target.name,
    reachable: f.error === null,
    error: f.error,
    replica: f.info?.replica ?? null,
    version: f.info?.version ?? null,
    revision: f.info?.snapshot?.revision ?? null,
    snapshotAgeMs: f.info?.snapshot?.ageMs ?? null,
    uptimeMs: f.info?.uptimeMs ?? null,
  }));
  const disagreements: Disagreement[] = [];
  for (const r of replicas)
    if (!r.reachable) disagreements.push({ kind: 'unreachable', target: r.target, error: r.error ?? '' });
  // Without the operator's revision, the most common one among the replicas is the reference.
  let expected = opts.expectedRevision;
  if (expected === null) {
    const counts = new Map<string, number>();
    for (const r of replicas) if (r.revision) counts.set(r.revision, (counts.get(r.revision) ?? 0) + 1);
    expected = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] ?? null;
  }
  if (expected !== null) {
    for (const r of replicas)
      if (r.reachable && r.revision !== expected)
        disagreements.push({ kind: 'revision', target: r.target, revision: r.revision, expected });
  }

  const backends = new Map<string, AggregatedBackend>();
  for (const f of fetched) {
    for (const b of f.backends) {
      let agg = backends.get(b.id);
      if (!agg) {
        agg = { id: b.id, policy: b.policy, endpoints: [] };
        backends.set(b.id, agg);
      }
      for (const e of b.endpoints) {
        let ae = agg.endpoints.find((x) => x.id === e.id && x.url === e.url);
        if (!ae) {
          ae = { id: e.id, url: e.url, source: e.source, gateway: false, states: {}, chain: null };
          agg.endpoints.push(ae);
        }
        ae.gateway ||= e.gateway || e.source === 'gateway';
        ae.states[f.target.name] = { state: e.state, reason: e.reason, inflight: e.inflight };
      }
    }
  }
  const list = [...backends.values()].sort((a, b) => a.id.localeCompare(b.id));
  for (const b of list) {
    for (const e of b.endpoints) {
      const states = Object.values(e.states).map((s) => s.state);
      if (new Set(states).size > 1) {
        disagreements.push({
          kind: 'endpoint_state',
          backend: b.id,
          endpoint: e.id,
          states: Object.fromEntries(Object.entries(e.states).map(([t, s]) => [t, s.state])),
        });
      }
    }
  }
  await Promise.all(
    list.flatMap((b) =>
      b.endpoints
        .filter((e) => e.gateway)
        .map(async (e) => {
          const chain = opts.chains?.[e.url] ?? opts.chains?.[new URL(e.url).origin];
          if (!chain) {
            e.chain = {
              adminUrl: null,
              reachable: false,
              error: 'no admin URL configured for this gateway',
              backends: [],
            };
            return;
          }
          try {
            const doc = (await getJson(`${chain.adminUrl}/admin/backends`, chain.token, timeoutMs)) as {
              backends: BackendView[];
            };
            e.chain = { adminUrl: chain.adminUrl, reachable: true, error: null, backends: doc.backends };
          } catch (err) {
            e.chain = { adminUrl: chain.adminUrl, reachable: false, error: message(err), backends: [] };
          }
        }),
    ),
  );
  return {
    at: new Date().toISOString(),
    expectedRevision: expected,
    replicas,
    backends: list,
    disagreements,
  };
}
