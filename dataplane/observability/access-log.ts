// One structured line per request on the public port, through the data plane's pino logger. What it
// may hold is fixed here: identifiers (request id, tenant, the key's 12-character prefix, user id),
// routing facts, sizes, durations and the admission decision — never a credential, a header value
// the client sent, a query string or a body. Sampling thins successful requests only: refusals and
// failures (status >= 400) are always logged, so the lines on-call needs are never sampled away.
import type { Level, Logger } from 'pino';

export interface AccessLogOptions {
  /** False: no access log at all. */
  enabled: boolean;
  /** pino level of the lines. Default info. */
  level: Level;
  /** Share of requests with status < 400 that are logged, 0..1. Default 1. */
  sampleRate: number;
}

const DEFAULT_ACCESS_LOG: AccessLogOptions = { enabled: true, level: 'info', sampleRate: 1 };

/** The facts of one finished request; `limits` is the admission outcome. */
export interface AccessLogEntry {
  requestId: string;
  method: string;
  /** Path only: a query string may carry secrets. */
  path: string;
  status: number;
  tenant: string | null;
  keyPrefix: string | null;
  userId: string | null;
  backend: string | null;
  endpoint: string | null;
  model: string | null;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
  ttfbMs: number | null;
  /** Upstream attempts beyond the first. */
  retries: number;
  /** 'admitted', or the refusal's error code (rate_limited, quota_exceeded, ...); null before admission. */
  limits: string | null;
  /** The gateway's error code when the gateway answered instead of the backend. */
  error: string | null;
  traceId: string | null;
}

export class AccessLog {
  readonly #logger: Logger;
  readonly #level: Level;
  readonly #sampleRate: number;

  constructor(logger: Logger, opts: Partial<AccessLogOptions> = {}) {
    const o = { ...DEFAULT_ACCESS_LOG, ...opts };
    this.#logger = logger;
    this.#level = o.level;
    this.#sampleRate = Math.min(1, Math.max(0, o.sampleRate));
  }

  /** Whether this request's line would be written; cheap, so the entry is only built when it is. */
  wants(status: number): boolean {
    if (!this.#logger.isLevelEnabled(this.#level)) return false;
    return status >= 400 || this.#sampleRate >= 1 || Math.random() < this.#sampleRate;
  }

  write(entry: AccessLogEntry): void {
    this.#logger[this.#level]({ access: entry }, 'request');
  }
}

const TRACEPARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}/;

/** The trace id of a W3C traceparent header, or null when absent or malformed (or all zeros). */
export function traceIdOf(traceparent: string | string[] | undefined): string | null {
  if (typeof traceparent !== 'string') return null;
  const m = TRACEPARENT.exec(traceparent);
  return m && m[1] !== '00000000000000000000000000000000' ? (m[1] as string) : null;
}
