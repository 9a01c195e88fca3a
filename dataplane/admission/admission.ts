// The admission step, between routing and forwarding. Per snapshot it compiles what identity and
// admission need (key index with parsed CIDRs, per-tenant JWT verifiers, trusted proxies, CORS);
// across snapshots it keeps what must survive a swap (token buckets, in-flight counts, JWKS
// caches, per-address buckets). The request path calls:
//
//   const who = await rt.admission.authenticate(req);        // 401/403/429 or a principal
//   ... route, choose the backend ...
//   const a = await rt.admission.admit({ principal, ... });  // 429/503 or a ticket; null: client gone
//   ... forward ...
//   a.end(usage);                                            // exactly once, when the response ends
//
// Order inside admit: rate limits (requests, tokens, concurrency; key, then tenant), the metering
// gate for fail-closed tenants, then the quota lease. Nothing is spent unless everything passes.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP, type BlockList, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type {
  ApiKey,
  Backend,
  ClientLimits,
  RateLimits,
  Route,
  Snapshot,
  Tenant,
} from '../config/snapshot.ts';
import { gatewayError, type GatewayError } from '../errors.ts';
import { addressIn, compileCidrs, normalizeAddress } from '../auth/cidr.ts';
import {
  buildKeyIndex,
  checkKeyEntry,
  credentialOf,
  findKey,
  MISSING_CREDENTIALS,
  unauthenticated,
  type IdentifyResult,
  type KeyEntry,
  type KeyIndex,
  type Principal,
} from '../auth/identify.ts';
import { JwksCache, JwtVerifiers, type JwksOptions } from '../auth/jwt.ts';
import { compileCors, type CompiledCors } from '../http/cors.ts';
import { AddressBuckets, LimitStore, replicaLimits, unlimited, type LimitState } from '../limits/limiter.ts';
import type { TokenBucket } from '../limits/bucket.ts';
import type { QuotaDecision, QuotaManager, QuotaTicket } from '../metering/quota.ts';
import type { AdmissionRejectionReason } from '../metrics/metrics.ts';

export interface AdmissionOptions {
  logger: Logger;
  /** Quota leases; none: quotas are not enforced. */
  quota?: QuotaManager | null;
  /** The metering writer's gate: fail-closed tenants are refused while usage cannot be recorded. */
  metering?: { canAdmit(failOpen: boolean): boolean } | null;
  jwks?: Partial<JwksOptions>;
  /** Leeway for exp and nbf. Default 30 s. */
  clockToleranceSeconds?: number;
  /** Output tokens assumed for a request that names no max_tokens. Default 256. */
  defaultMaxTokens?: number;
  /** Told of every 429 rate_limit_exceeded (tenant '' for per-address limits): the rejections metric. */
  rejected?: (tenant: string, reason: AdmissionRejectionReason) => void;
}

const DEFAULT_CLIENT_LIMITS: ClientLimits = {
  publicRequestsPerMinute: 600,
  authFailuresPerMinute: 30,
};

/** What a request actually used, from its usage event. */
export interface Usage {
  inputTokens: number;
  outputTokens: number;
  credits: number;
}

/** Proof of admission; end it exactly once (further calls do nothing). */
export interface Admitted {
  /** X-RateLimit-* for the response; null when the principal has no rate limit. */
  readonly headers: Readonly<Record<string, string>> | null;
  /** True when end() needs the request's usage (tokens/min correction, quota settlement). */
  readonly wantsUsage: boolean;
  end(usage: Usage | null): void;
}

export interface AdmitRequest {
  /** Null on a public route. */
  principal: Principal | null;
  req: IncomingMessage;
  res: ServerResponse;
  backend: Backend;
  route: Route;
  /** The JSON object body as the proxy parsed it (small JSON bodies); null when it streams or is not one. */
  request: Readonly<Record<string, unknown>> | null;
  bodyBytes: number;
}

const QUOTA_READY_WAIT_MS = 2_000;

const NOTHING_TO_END: Admitted = { headers: null, wantsUsage: false, end: () => undefined };

const MAX_TOKENS_FIELDS = ['max_tokens', 'max_completion_tokens', 'max_output_tokens'] as const;

/** Rough prompt size when the backend has not told us yet: ~4 bytes per token, as in metering. */
function inputTokensOf(bodyBytes: number): number {
  return Math.ceil(bodyBytes / 4);
}

function maxTokensOf(request: Readonly<Record<string, unknown>> | null, fallback: number): number {
  if (request === null) return fallback;
  for (const field of MAX_TOKENS_FIELDS) {
    const v = request[field];
    if (typeof v === 'number' && Number.isFinite(v) && v >= 0) return Math.min(Math.ceil(v), 10_000_000);
  }
  return fallback;
}

/** Cheap test before computing per-replica shares: most keys have no limits of their own. */
function hasLimits(l: RateLimits): boolean {
  return !!(l.requestsPerMinute || l.tokensPerMinute || l.concurrentRequests);
}

function seconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000));
}

/** X-RateLimit-* of one bucket; `scope` names whose bucket and of what ('key; tokens'). */
function bucketHeaders(bucket: TokenBucket, scope: string, now: number): Record<string, string> {
  return {
    'x-ratelimit-limit': String(Math.floor(bucket.capacity)),
    'x-ratelimit-remaining': String(bucket.remaining(now)),
    'x-ratelimit-reset': String(seconds(bucket.msUntilFull(now))),
    'x-ratelimit-scope': scope,
  };
}

const BUCKET_KINDS = ['requests', 'tokens'] as const;
/** Scope header values, spelled once so the per-request header choice builds no strings. */
const SCOPES = {
  key: { requests: 'key; requests', tokens: 'key; tokens' },
  tenant: { requests: 'tenant; requests', tokens: 'tenant; tokens' },
} as const;

interface Subject {
  label: 'key' | 'tenant';
  state: LimitState;
}

interface LimitedSubjects {
  readonly subjects: readonly Subject[];
  /** A tokens-per-minute bucket among them: admission needs the request's token estimate. */
  readonly tokens: boolean;
}

class Ticket implements Admitted {
  readonly headers: Readonly<Record<string, string>> | null;
  readonly wantsUsage: boolean;
  readonly #subjects: readonly Subject[];
  readonly #tokens: number;
  readonly #quota: QuotaManager | null;
  readonly #ticket: QuotaTicket | null;
  #ended = false;

  constructor(
    subjects: readonly Subject[],
    tokens: number,
    quota: QuotaManager | null,
    ticket: QuotaTicket | null,
    headers: Record<string, string> | null,
  ) {
    this.headers = headers;
    this.wantsUsage = ticket !== null || subjects.some((s) => s.state.tokens !== null);
    this.#subjects = subjects;
    this.#tokens = tokens;
    this.#quota = quota;
    this.#ticket = ticket;
  }

  end(usage: Usage | null): void {
    if (this.#ended) return;
    this.#ended = true;
    const now = Date.now();
    for (const { state } of this.#subjects) {
      state.inflight--;
      // Correct the estimate charged at admission by what the backend reported.
      if (state.tokens && usage)
        state.tokens.adjust(this.#tokens - (usage.inputTokens + usage.outputTokens), now);
    }
    if (this.#quota && this.#ticket) this.#quota.settle(this.#ticket, usage?.credits ?? 0);
  }
}

/** Lives as long as the data plane. */
export class Admission {
  readonly limits = new LimitStore();
  readonly publicBuckets = new AddressBuckets();
  readonly failureBuckets = new AddressBuckets();
  readonly jwks: JwksCache;
  readonly opts: AdmissionOptions;
  readonly quota: QuotaManager | null;

  constructor(opts: AdmissionOptions) {
    this.opts = opts;
    this.quota = opts.quota ?? null;
    this.jwks = new JwksCache(opts.jwks);
  }

  compile(snapshot: Snapshot): CompiledAdmission {
    const compiled = new CompiledAdmission(this, snapshot);
    const keyIds = new Set(snapshot.keys.map((k) => `key:${k.id}`));
    const tenantIds = new Set(snapshot.tenants.map((t) => `tenant:${t.id}`));
    this.limits.retain((s) => keyIds.has(s) || tenantIds.has(s));
    return compiled;
  }
}

export class CompiledAdmission {
  readonly keys: KeyIndex;
  readonly cors: CompiledCors | null;
  readonly #shared: Admission;
  readonly #jwt: JwtVerifiers;
  readonly #trusted: BlockList | null;
  readonly #replicas: number;
  readonly #publicPerMinute: number;
  readonly #failuresPerMinute: number;
  /**
   * Resolves once the quota manager has stored this snapshot's quota balances (it tracks the
   * subjects at once; a lease needs the stored row). Admission waits for it, at most
   * QUOTA_READY_WAIT_MS: with Postgres down, the quota manager's own failure policy decides.
   */
  readonly #quotaReady: Promise<void>;
  #quotaStored = false;
  /** Per connection, the last API key it sent and its index entry: see #identifyKey. */
  readonly #lastKey = new WeakMap<Socket, { credential: string; entry: KeyEntry }>();
  /** By key id, and by tenant id for principals without a key (JWT): see #limitedSubjects. */
  readonly #keySubjects = new Map<string, LimitedSubjects>();
  readonly #tenantSubjects = new Map<string, LimitedSubjects>();

  constructor(shared: Admission, snapshot: Snapshot) {
    const { logger } = shared.opts;
    this.#shared = shared;
    const s = snapshot.settings;
    this.#replicas = s.replicas;
    this.keys = buildKeyIndex(snapshot.keys, snapshot.tenants, (keyId, message) =>
      logger.warn({ key: keyId }, message),
    );
    this.#jwt = new JwtVerifiers(snapshot.tenants, shared.jwks, shared.opts.clockToleranceSeconds ?? 30);
    this.cors = compileCors(s.cors);
    let trusted: BlockList | null = null;
    if (s.trustedProxies && s.trustedProxies.length > 0) {
      const parsed = compileCidrs(s.trustedProxies);
      if (parsed.ok) trusted = parsed.list;
      else logger.warn({ problem: parsed.message }, 'settings.trustedProxies ignored');
    }
    this.#trusted = trusted;
    const cl = s.clientLimits ?? DEFAULT_CLIENT_LIMITS;
    this.#publicPerMinute =
      cl.publicRequestsPerMinute === 0 ? 0 : Math.max(1, cl.publicRequestsPerMinute / s.replicas);
    this.#failuresPerMinute =
      cl.authFailuresPerMinute === 0 ? 0 : Math.max(1, cl.authFailuresPerMinute / s.replicas);
    const quota = shared.quota;
    this.#quotaStored = quota === null;
    this.#quotaReady = quota
      ? quota.applySnapshot(snapshot).then(
          () => {
            this.#quotaStored = true;
          },
          (err: unknown) => {
            this.#quotaStored = true;
            logger.error({ err }, 'quota balances of this snapshot could not be stored');
          },
        )
      : Promise.resolve();
  }

  /**
   * The client's address: the socket peer, or, when the peer is a trusted proxy, the nearest
   * X-Forwarded-For entry that is not a trusted proxy.
   */
  clientIp(req: IncomingMessage): string {
    const peer = normalizeAddress(req.socket.remoteAddress ?? '');
    const trusted = this.#trusted;
    if (trusted === null || !addressIn(trusted, peer)) return peer;
    const xff = req.headers['x-forwarded-for'];
    if (typeof xff !== 'string') return peer;
    const hops = xff.split(',');
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = normalizeAddress((hops[i] as string).trim());
      if (isIP(hop) === 0) return peer;
      if (!addressIn(trusted, hop)) return hop;
    }
    return peer;
  }

  /**
   * 429 when the client's address has used up its budget of failed authentications (API keys, JWTs
   * and registration secrets share it); null when it may try. Spends nothing.
   */
  refuseFailingAddress(ip: string, now: number): GatewayError | null {
    const perMinute = this.#failuresPerMinute;
    if (perMinute === 0) return null;
    const wait = this.#shared.failureBuckets.waitFor(ip, perMinute, now);
    if (wait === 0) return null;
    this.#shared.opts.rejected?.('', 'auth_failures');
    return gatewayError(
      429,
      'rate_limit_error',
      'rate_limit_exceeded',
      `too many failed authentications from ${ip}; retry in ${seconds(wait)} s`,
      { 'retry-after': String(seconds(wait)) },
    );
  }

  /** Counts one failed authentication against the client's address. */
  countFailure(ip: string, now: number): void {
    if (this.#failuresPerMinute > 0) this.#shared.failureBuckets.spend(ip, this.#failuresPerMinute, now);
  }

  /** Who is calling. Addresses with too many failed attempts are refused before their credential is looked at. */
  authenticate(req: IncomingMessage): IdentifyResult | Promise<IdentifyResult> {
    const now = Date.now();
    const ip = this.clientIp(req);
    const throttled = this.refuseFailingAddress(ip, now);
    if (throttled) return { ok: false, error: throttled };
    const credential = credentialOf(req.headers);
    switch (credential.kind) {
      case 'none':
        // Not counted: sending nothing guesses nothing.
        return unauthenticated('missing_credentials', MISSING_CREDENTIALS);
      case 'malformed':
        return this.#counted(unauthenticated('invalid_api_key', credential.message), ip, now);
      case 'key':
        return this.#counted(this.#identifyKey(req, credential.key, now, ip), ip, now);
      case 'jwt':
        if (this.#jwt.size === 0) {
          return this.#counted(
            unauthenticated(
              'invalid_api_key',
              'the credential is not a gpugate API key, and no tenant accepts JWTs',
            ),
            ip,
            now,
          );
        }
        return this.#jwt.verify(credential.token, now).then((r) => this.#counted(r, ip, Date.now()));
    }
  }

  /**
   * A keep-alive client sends the same key on every request of a connection: the shape check and the
   * SHA-256 lookup run for its first request under this snapshot, later ones compare the string (in
   * constant time, see sameCredential). What
   * may change per request (disabled, expiry, suspension, client address) is checked every time. The
   * memo lives as long as the connection and only holds a key that this connection sent and that
   * exists in the snapshot.
   */
  #identifyKey(req: IncomingMessage, credential: string, now: number, ip: string): IdentifyResult {
    const socket = req.socket;
    const last = this.#lastKey.get(socket);
    if (last !== undefined && sameCredential(last.credential, credential)) {
      return checkKeyEntry(last.entry, now, ip);
    }
    const found = findKey(credential, this.keys);
    if ('ok' in found) return found;
    this.#lastKey.set(socket, { credential, entry: found });
    return checkKeyEntry(found, now, ip);
  }

  #counted(r: IdentifyResult, ip: string, now: number): IdentifyResult {
    if (!r.ok && r.error.status === 401) this.countFailure(ip, now);
    return r;
  }

  /** Rate limits, the metering gate and the quota for one routed request. Null: the client went away. */
  admit(a: AdmitRequest): Admitted | GatewayError | null | Promise<Admitted | GatewayError | null> {
    const now = Date.now();
    const principal = a.principal;
    if (principal === null) return this.#admitPublic(a.req, now);
    const { tenant, key } = principal;
    const shared = this.#shared;
    const limited = this.#limitedSubjects(key, tenant, now);
    const subjects = limited.subjects;

    const needsEstimate =
      limited.tokens ||
      (shared.quota !== null && (tenant.quota !== null || (key !== null && key.quota !== null)));
    const inputTokens = needsEstimate ? inputTokensOf(a.bodyBytes) : 0;
    const maxTokens = needsEstimate ? maxTokensOf(a.request, shared.opts.defaultMaxTokens ?? 256) : 0;
    const tokens = inputTokens + maxTokens;

    for (const s of subjects) {
      const refused = this.#check(s, tokens, now, tenant.id);
      if (refused) return refused;
    }
    for (const { state } of subjects) {
      state.requests?.take(1, now);
      state.tokens?.take(tokens, now);
      state.inflight++;
    }
    const headers = subjects.length > 0 ? this.#rateLimitHeaders(subjects, now) : null;

    if (shared.opts.metering && !shared.opts.metering.canAdmit(tenant.failOpen)) {
      this.#undo(subjects, tokens);
      return gatewayError(
        503,
        'overloaded_error',
        'metering_unavailable',
        `usage cannot be recorded right now and tenant ${tenant.id} is fail-closed; retry later`,
        { 'retry-after': '5' },
      );
    }
    const quota = shared.quota;
    if (quota === null || (tenant.quota === null && (key === null || key.quota === null))) {
      if (subjects.length === 0) return NOTHING_TO_END;
      return this.#guarded(new Ticket(subjects, tokens, null, null, headers), a.res);
    }
    const p = a.backend.pricing;
    const estimate =
      p.perRequest + (a.route.cost ?? 0) + inputTokens * p.perInputToken + maxTokens * p.perOutputToken;
    // The slice this replica holds usually decides at once: no promise, no microtask.
    if (this.#quotaStored) {
      const d = quota.tryAdmit(tenant.id, key?.id ?? null, estimate);
      if (d !== null) return this.#quotaDecided(d, a, subjects, tokens, headers);
    }
    return this.#admitQuota(quota, a, subjects, tokens, estimate, headers);
  }

  /**
   * The rate-limited subjects of a key (or of a JWT's tenant), configured on their first request under
   * this snapshot and then reused: limits and the replica count do not change within a snapshot, and
   * the states themselves (LimitStore) outlive it.
   */
  #limitedSubjects(key: ApiKey | null, tenant: Tenant, now: number): LimitedSubjects {
    const cache = key === null ? this.#tenantSubjects : this.#keySubjects;
    const id = key === null ? tenant.id : key.id;
    let limited = cache.get(id);
    if (limited !== undefined) return limited;
    const store = this.#shared.limits;
    const subjects: Subject[] = [];
    if (key !== null && hasLimits(key.limits)) {
      const l = replicaLimits(key.limits, this.#replicas);
      if (!unlimited(l)) subjects.push({ label: 'key', state: store.state(`key:${key.id}`, l, now) });
    }
    if (hasLimits(tenant.limits)) {
      const tl = replicaLimits(tenant.limits, this.#replicas);
      if (!unlimited(tl))
        subjects.push({ label: 'tenant', state: store.state(`tenant:${tenant.id}`, tl, now) });
    }
    limited = { subjects, tokens: subjects.some((s) => s.state.tokens !== null) };
    cache.set(id, limited);
    return limited;
  }

  async #admitQuota(
    quota: QuotaManager,
    a: AdmitRequest,
    subjects: readonly Subject[],
    tokens: number,
    estimate: number,
    headers: Record<string, string> | null,
  ): Promise<Admitted | GatewayError | null> {
    const { tenant, key } = a.principal as Principal;
    if (!this.#quotaStored) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.#quotaReady,
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, QUOTA_READY_WAIT_MS);
        }),
      ]);
      clearTimeout(timer);
    }
    const d = await quota.admit(tenant.id, key?.id ?? null, estimate);
    return this.#quotaDecided(d, a, subjects, tokens, headers);
  }

  /** 429/503 for a refused quota decision, else the admission ticket. */
  #quotaDecided(
    d: QuotaDecision,
    a: AdmitRequest,
    subjects: readonly Subject[],
    tokens: number,
    headers: Record<string, string> | null,
  ): Admitted | GatewayError | null {
    const { tenant, key } = a.principal as Principal;
    if (!d.ok) {
      this.#undo(subjects, tokens);
      const whose = d.subject === 'key' && key ? `API key ${key.prefix}…` : `tenant ${tenant.id}`;
      if (d.code === 'quota_unavailable') {
        return gatewayError(
          503,
          'overloaded_error',
          'quota_unavailable',
          `the quota of ${whose} cannot be checked right now and the tenant is fail-closed; retry later`,
          { 'retry-after': '1' },
        );
      }
      const end = d.periodEnd;
      return gatewayError(
        429,
        'rate_limit_error',
        'quota_exceeded',
        end
          ? `the credit quota of ${whose} is used up until ${end.toISOString()}`
          : `the credit quota of ${whose} is used up (it does not reset; ask for a top-up)`,
        end ? { 'retry-after': String(seconds(end.getTime() - Date.now())) } : undefined,
      );
    }
    return this.#guarded(new Ticket(subjects, tokens, this.#shared.quota, d.ticket, headers), a.res);
  }

  /**
   * A client that left while admission was pending gets null (nothing is forwarded) and its ticket is
   * ended here. Otherwise the caller ends the ticket: the proxy does in its response 'close' listener,
   * registered before admission, and takes the ticket in the same microtask it is returned in, so no
   * 'close' can come in between. (A second 'close' listener per request here cost more than the rest of
   * quota admission: a once-wrapper, the listener array and its copy on every emit.)
   */
  #guarded(ticket: Ticket, res: ServerResponse): Ticket | null {
    if (res.destroyed) {
      ticket.end(null);
      return null;
    }
    return ticket;
  }

  #check(s: Subject, tokens: number, now: number, tenant: string): GatewayError | null {
    const { state, label } = s;
    const rejected = this.#shared.opts.rejected;
    if (state.concurrent > 0 && state.inflight >= state.concurrent) {
      rejected?.(tenant, 'concurrent_requests');
      return this.#refusal(label, 'concurrent requests', state.concurrent, 1000, null, now);
    }
    if (state.requests) {
      const wait = state.requests.waitFor(1, now);
      if (wait > 0) {
        rejected?.(tenant, 'requests_per_minute');
        return this.#refusal(label, 'requests per minute', 0, wait, state.requests, now);
      }
    }
    if (state.tokens) {
      const wait = state.tokens.waitFor(tokens, now);
      if (wait > 0) {
        rejected?.(tenant, 'tokens_per_minute');
        return this.#refusal(label, 'tokens per minute', 0, wait, state.tokens, now);
      }
    }
    return null;
  }

  #refusal(
    label: string,
    what: string,
    concurrent: number,
    waitMs: number,
    bucket: TokenBucket | null,
    now: number,
  ): GatewayError {
    const headers: Record<string, string> = {
      'retry-after': String(seconds(waitMs)),
      ...(bucket &&
        bucketHeaders(bucket, `${label}; ${what === 'tokens per minute' ? 'tokens' : 'requests'}`, now)),
    };
    const limit = bucket ? Math.floor(bucket.capacity) : concurrent;
    return gatewayError(
      429,
      'rate_limit_error',
      'rate_limit_exceeded',
      `the ${label}'s limit of ${limit} ${what} on this gateway replica is reached; retry in ${seconds(waitMs)} s`,
      headers,
    );
  }

  /** X-RateLimit-* of the bucket with the smallest share left (requests or tokens, key or tenant). */
  #rateLimitHeaders(subjects: readonly Subject[], now: number): Record<string, string> | null {
    let best: TokenBucket | null = null;
    let bestScope = '';
    let bestShare = Infinity;
    for (const { label, state } of subjects) {
      for (const kind of BUCKET_KINDS) {
        const bucket = state[kind];
        if (!bucket) continue;
        const share = bucket.remaining(now) / bucket.capacity;
        if (share < bestShare) {
          best = bucket;
          bestShare = share;
          bestScope = SCOPES[label][kind];
        }
      }
    }
    return best && bucketHeaders(best, bestScope, now);
  }

  #undo(subjects: readonly Subject[], tokens: number): void {
    const now = Date.now();
    for (const { state } of subjects) {
      state.requests?.adjust(1, now);
      state.tokens?.adjust(tokens, now);
      state.inflight--;
    }
  }

  #admitPublic(req: IncomingMessage, now: number): Admitted | GatewayError {
    const perMinute = this.#publicPerMinute;
    if (perMinute === 0) return NOTHING_TO_END;
    const ip = this.clientIp(req);
    const buckets = this.#shared.publicBuckets;
    const wait = buckets.waitFor(ip, perMinute, now);
    if (wait > 0) {
      this.#shared.opts.rejected?.('', 'public_requests');
      return gatewayError(
        429,
        'rate_limit_error',
        'rate_limit_exceeded',
        `too many requests to public routes from ${ip}; retry in ${seconds(wait)} s`,
        { 'retry-after': String(seconds(wait)) },
      );
    }
    buckets.spend(ip, perMinute, now);
    return NOTHING_TO_END;
  }
}

/**
 * Whether a connection sent the same key again, in time that does not depend on where two keys of one
 * length differ: behind an ingress one upstream connection carries many clients' requests, so the memo
 * may hold another client's key, and an early-exit comparison would time how much of it a guess shares.
 */
function sameCredential(known: string, presented: string): boolean {
  if (known.length !== presented.length) return false;
  let diff = 0;
  for (let i = 0; i < known.length; i++) diff |= known.charCodeAt(i) ^ presented.charCodeAt(i);
  return diff === 0;
}
