// One usage event per request that reached admission: the unit of metering. The request path
// produces these; the metering writer batches them into Postgres, idempotent on requestId.

/**
 * The tenant of usage events for requests to public routes (no credentials): they reach admission
 * and a backend like any other, so they are metered, under this pseudo-tenant that no Tenant can be
 * (parentheses are not allowed in Kubernetes names). No quota applies; credits are what the route
 * would cost, so reports show what public traffic costs. See docs/decisions.md.
 */
export const PUBLIC_TENANT = '(public)';

export interface UsageEvent {
  requestId: string;
  /** Epoch milliseconds when the request arrived. */
  time: number;
  /** Tenant id (namespace/name), or PUBLIC_TENANT for a request to a public route. */
  tenant: string;
  /** ApiKey id (namespace/name), null for JWT or public requests. */
  keyId: string | null;
  userId: string | null;
  backend: string | null;
  endpoint: string | null;
  /** Route path prefix that matched, never the raw path. */
  route: string | null;
  model: string | null;
  status: number;
  inputTokens: number;
  outputTokens: number;
  /** True when token counts were estimated rather than read from the backend's usage report. */
  tokensEstimated: boolean;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
  /** Time to first response byte from the upstream, null when none arrived. */
  ttfbMs: number | null;
  credits: number;
}

/** Where the request path hands finished requests. Must never throw or block the request. */
export interface UsageSink {
  record(event: UsageEvent): void;
}
