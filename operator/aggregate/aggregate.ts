// The fleet view: every data-plane target's admin views fetched in parallel and merged, with the
// disagreements an on-call engineer needs flagged (a replica on another revision than the operator's,
// an endpoint healthy on one replica and not on another), targets that could not be reached named,
// and endpoints that are themselves gpugate gateways followed to their own admin API when one is
// configured for them (one level: a chained gateway's view is not followed further).
// The operator serves this (operator/aggregate/routes.ts: GET /fleet on its port) over the data planes it
// pushes to; `gpugate status` asks the operator or a list of admin ports.
import type { BackendView, EndpointHealth } from '../../dataplane/admin/views.ts';
import type { QuotaState } from '../../dataplane/usage/queries.ts';

export interface AdminTarget {
  /** How the target is named in the output (pod name, URL). */
  name: string;
  /** The admin port's base URL. */
  adminUrl: string;
  token: string;
  /**
   * The revision this target should serve when it differs from the fleet's (a sidecar gets its own
   * variant of the snapshot); absent: the fleet's expected revision.
   */
  expectedRevision?: string | null;
}

export interface ReplicaInfo {
  target: string;
  reachable: boolean;
  error: string | null;
  replica: string | null;
  version: string | null;
  revision: string | null;
  /** What it should serve (its own, or the fleet's); null when unknown. */
  expectedRevision: string | null;
  snapshotAgeMs: number | null;
  uptimeMs: number | null;
  /** The replica's feature flags from /admin/info (metering, quota, usageApi, accessLog, tracing). */
  features: Record<string, boolean> | null;
}

export interface AggregatedEndpoint {
  id: string;
  url: string;
  source: string;
  gateway: boolean;
  /** State per reachable target name. */
  states: Record<string, { state: EndpointHealth; reason: string | null; inflight: number }>;
  /** For a gateway endpoint: its own fleet's backends, or why they could not be read. */
  chain: ChainView | null;
}

export interface ChainView {
  adminUrl: string | null;
  reachable: boolean;
  /** Why its admin API could not be read (not configured, refused, timed out, 401). */
  error: string | null;
  /** The chained gateway's own replica id, version and revision, when read. */
  replica: string | null;
  version: string | null;
  revision: string | null;
  backends: BackendView[];
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

/** Where a chained gateway's admin API is, keyed by the endpoint URL (or its origin) that reaches it. */
export type ChainTargets = Record<string, { adminUrl: string; token: string }>;

export interface AggregateOptions {
  targets: AdminTarget[];
  expectedRevision: string | null;
  /** Admin API of gateways that are endpoints of our backends, by endpoint URL (or its origin). */
  chains?: ChainTargets;
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
  features?: Record<string, boolean>;
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
    expectedRevision: f.target.expectedRevision ?? null,
    snapshotAgeMs: f.info?.snapshot?.ageMs ?? null,
    uptimeMs: f.info?.uptimeMs ?? null,
    features: f.info?.features ?? null,
  }));
  const disagreements: Disagreement[] = [];
  for (const r of replicas)
    if (!r.reachable) disagreements.push({ kind: 'unreachable', target: r.target, error: r.error ?? '' });
  // Without the operator's revision, the most common one among the replicas is the reference.
  let expected = opts.expectedRevision;
  if (expected === null) {
    const counts = new Map<string, number>();
    for (const r of replicas)
      if (r.revision && r.expectedRevision === null)
        counts.set(r.revision, (counts.get(r.revision) ?? 0) + 1);
    expected = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] ?? null;
  }
  for (const r of replicas) {
    r.expectedRevision ??= expected;
    if (r.reachable && r.expectedRevision !== null && r.revision !== r.expectedRevision)
      disagreements.push({
        kind: 'revision',
        target: r.target,
        revision: r.revision,
        expected: r.expectedRevision,
      });
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
          e.chain = await readChain(e.url, opts.chains ?? {}, timeoutMs);
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

/** A chained gateway's view through its admin API, or why it could not be read. */
async function readChain(url: string, chains: ChainTargets, timeoutMs: number): Promise<ChainView> {
  const chain = chains[url] ?? chains[url.replace(/\/+$/, '')] ?? chains[new URL(url).origin];
  const none = { replica: null, version: null, revision: null, backends: [] };
  if (!chain)
    return { adminUrl: null, reachable: false, error: 'no admin URL configured for this gateway', ...none };
  try {
    const [info, doc] = await Promise.all([
      getJson(`${chain.adminUrl}/admin/info`, chain.token, timeoutMs) as Promise<InfoDoc>,
      getJson(`${chain.adminUrl}/admin/backends`, chain.token, timeoutMs) as Promise<{
        backends: BackendView[];
      }>,
    ]);
    return {
      adminUrl: chain.adminUrl,
      reachable: true,
      error: null,
      replica: info.replica,
      version: info.version,
      revision: info.snapshot?.revision ?? null,
      backends: doc.backends,
    };
  } catch (err) {
    return { adminUrl: chain.adminUrl, reachable: false, error: message(err), ...none };
  }
}

export interface TenantOnReplica {
  target: string;
  reachable: boolean;
  /** Unreachable, or what the replica answered instead of the view (404 unknown_tenant, 401). */
  error: string | null;
  /** The replica's /admin/tenants view (docs/operability.md), as it answered. */
  view: TenantViewDoc | null;
}

/** The parts of a replica's tenant view the fleet view reads; the rest is passed through. */
export interface TenantViewDoc {
  replica: string;
  revision: string;
  tenant: string;
  suspended: boolean;
  limits: {
    configured: {
      requestsPerMinute: number | null;
      tokensPerMinute: number | null;
      concurrentRequests: number | null;
    };
    replica: {
      requests: { limitPerMinute: number; remaining: number; msUntilFull: number } | null;
      tokens: { limitPerMinute: number; remaining: number; msUntilFull: number } | null;
      concurrent: { limit: number; inflight: number };
    } | null;
  };
  quota: {
    credits: number;
    period: string;
    leasedHere: number | null;
    balance: QuotaState | null;
    balanceError: string | null;
  } | null;
  keys: { id: string; prefix: string; disabled: boolean; expiresAt: string | null }[];
}

export interface TenantFleet {
  at: string;
  tenant: string;
  replicas: TenantOnReplica[];
}

/** One tenant's view from every target (limits and buckets are per replica, so they are listed, not merged). */
export async function aggregateTenant(
  targets: AdminTarget[],
  tenant: string,
  timeoutMs = 3000,
): Promise<TenantFleet> {
  const replicas = await Promise.all(
    targets.map(async (t): Promise<TenantOnReplica> => {
      let res: Response;
      try {
        res = await fetch(`${t.adminUrl}/admin/tenants/${tenant}`, {
          headers: { authorization: `Bearer ${t.token}` },
          signal: AbortSignal.timeout(timeoutMs),
        });
      } catch (err) {
        return { target: t.name, reachable: false, error: message(err), view: null };
      }
      const body = (await res.json().catch(() => null)) as
        (TenantViewDoc & { error?: { message?: string } }) | null;
      if (res.ok && body) return { target: t.name, reachable: true, error: null, view: body };
      return {
        target: t.name,
        reachable: true,
        error: `answered ${res.status}${body?.error?.message ? `: ${body.error.message}` : ''}`,
        view: null,
      };
    }),
  );
  return { at: new Date().toISOString(), tenant, replicas };
}

/**
 * `--gateway-admin ENDPOINT=ADMIN_URL` values: a chained gateway reached at ENDPOINT (an endpoint URL or
 * its origin, as the backend lists it) has its admin API at ADMIN_URL. Throws naming the bad value.
 */
export function parseChainSpecs(flag: string, specs: string[], token: string): ChainTargets {
  const out: ChainTargets = {};
  for (const spec of specs) {
    const i = spec.indexOf('=');
    const [endpoint, admin] = i < 0 ? [spec, ''] : [spec.slice(0, i).trim(), spec.slice(i + 1).trim()];
    for (const [what, value] of [
      ['endpoint', endpoint],
      ['admin URL', admin],
    ] as const) {
      if (!URL.canParse(value) || !['http:', 'https:'].includes(new URL(value).protocol))
        throw new Error(
          `${flag} ${JSON.stringify(spec)}: the ${what} ${JSON.stringify(value)} is not an http(s) URL; use ENDPOINT_URL=ADMIN_URL, e.g. http://gw.example:8080=http://gw.example:9090`,
        );
    }
    out[endpoint.replace(/\/+$/, '')] = { adminUrl: admin.replace(/\/+$/, ''), token };
  }
  return out;
}
