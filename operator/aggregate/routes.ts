// The fleet view on the operator's port (token-protected like GET /snapshot): the operator knows every
// data-plane target it pushes to (the shared data plane's EndpointSlices, sidecars, --dataplane-url) and
// the revision each should serve, so it is the one place that can say which replica lags.
//   GET /fleet                       aggregateFleet over every target (docs/operability.md)
//   GET /fleet/tenants/<ns>/<name>   aggregateTenant: the tenant's view from every target
import { aggregateFleet, aggregateTenant, type AdminTarget, type ChainTargets } from './aggregate.ts';

export interface FleetSource {
  /** Every data-plane admin target with the revision it should serve (null: not compiled yet). */
  targets(): { url: string; name?: string; expectedRevision: string | null }[];
  /** The revision of the shared data plane's snapshot (sidecars have their own, per target). */
  revision(): string | null;
  /** The data planes' admin token (the push token); null until it is read. */
  token(): string | null;
  /** Chained gateways' admin APIs (--gateway-admin), read per request (the token may come later). */
  chains(): ChainTargets;
  timeoutMs?: number;
}

export interface RouteAnswer {
  status: number;
  body: unknown;
}

const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

/** The answer for a /fleet path, or null when the path is not one of them. The caller checks the token. */
export async function fleetRoute(path: string, source: FleetSource): Promise<RouteAnswer | null> {
  if (path !== '/fleet' && !path.startsWith('/fleet/')) return null;
  const token = source.token();
  if (token === null) return { status: 503, body: { error: 'no push token read yet' } };
  const targets: AdminTarget[] = source.targets().map((t) => ({
    name: t.name ?? new URL(t.url).host,
    adminUrl: t.url.replace(/\/+$/, ''),
    token,
    expectedRevision: t.expectedRevision,
  }));
  if (path === '/fleet') {
    return {
      status: 200,
      body: await aggregateFleet({
        targets,
        expectedRevision: source.revision(),
        chains: source.chains(),
        ...(source.timeoutMs ? { timeoutMs: source.timeoutMs } : {}),
      }),
    };
  }
  const m = /^\/fleet\/tenants\/([^/]+)\/([^/]+)$/.exec(path);
  if (!m)
    return { status: 404, body: { error: 'not found: use /fleet or /fleet/tenants/<namespace>/<name>' } };
  let ns: string;
  let name: string;
  try {
    [ns, name] = [decodeURIComponent(m[1]!), decodeURIComponent(m[2]!)];
  } catch {
    return { status: 400, body: { error: 'the tenant path is not valid percent-encoding' } };
  }
  for (const [what, value] of [
    ['namespace', ns],
    ['name', name],
  ] as const) {
    if (value.length > 253 || !NAME.test(value))
      return {
        status: 400,
        body: {
          error: `tenant ${what} ${JSON.stringify(value)} is not a valid name: lower-case letters, digits, '-' and '.'`,
        },
      };
  }
  return { status: 200, body: await aggregateTenant(targets, `${ns}/${name}`, source.timeoutMs) };
}
