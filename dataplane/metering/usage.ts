// One usage event per request that reached admission: the unit of metering. The request path
// produces these; the metering writer batches them into Postgres, idempotent on requestId.

export interface UsageEvent {
  requestId: string;
  /** Epoch milliseconds when the request arrived. */
  time: number;
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
