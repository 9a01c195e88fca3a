// JWT identity, per tenant. A token names its issuer; the tenant is the one whose jwt.issuer is
// that issuer and whose audiences include the token's audience (a tenant without audiences takes
// any). The claim is read unverified only to pick the tenant; the token is then verified against
// that tenant's keys alone: a JWKS (asymmetric algorithms only) or an HS256 secret (HS256 only), so
// a token signed with HS256 over a tenant's public key, or with alg "none", never verifies.
// Verifiers are built when a snapshot is compiled; remote key sets live in a JwksCache that
// outlives snapshots, so a swap never refetches keys.
import {
  createLocalJWKSet,
  decodeJwt,
  errors,
  jwtVerify,
  type JSONWebKeySet,
  type JWTPayload,
  type JWTVerifyGetKey,
} from 'jose';
import type { Tenant } from '../config/snapshot.ts';
import { gatewayError } from '../errors.ts';
import { forbidden, unauthenticated, type IdentifyResult } from './identify.ts';

export interface JwksOptions {
  /** After a successful fetch, an unknown kid triggers another fetch only after this long. */
  cooldownMs: number;
  /** Cached keys are refetched after this long even when every kid is known. */
  cacheMaxAgeMs: number;
  /** Timeout of one JWKS fetch. */
  timeoutMs: number;
  /** The clock (ms) the cooldown and cache age are measured with; Date.now unless a test controls time. */
  now: () => number;
}

const DEFAULT_JWKS: JwksOptions = {
  cooldownMs: 30_000,
  cacheMaxAgeMs: 600_000,
  timeoutMs: 5_000,
  now: () => Date.now(),
};

/** Accepted from a JWKS: asymmetric signatures only. */
const ASYMMETRIC = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'Ed25519',
];
const HMAC = ['HS256'];

/**
 * One issuer's key set, fetched from its URL (jose's local key set over the fetched keys). What
 * jose's createRemoteJWKSet does, with the clock injectable: fetched on first use and again after
 * cacheMaxAgeMs; an unknown kid refetches only when the last fetch is at least cooldownMs old;
 * concurrent callers share one fetch. Failures keep jose's errors (JWKSTimeout, a generic JOSEError
 * for a status other than 200 or a body that is not JSON, fetch's TypeError when unreachable).
 */
class RemoteKeySet {
  readonly #url: string;
  readonly #options: JwksOptions;
  #local: ReturnType<typeof createLocalJWKSet> | null = null;
  #fetchedAt = 0;
  #pending: Promise<void> | null = null;

  constructor(url: string, options: JwksOptions) {
    this.#url = new URL(url).href;
    this.#options = options;
  }

  readonly getKey: JWTVerifyGetKey = async (header, token) => {
    const { now, cacheMaxAgeMs, cooldownMs } = this.#options;
    let local = this.#local;
    if (local === null || now() - this.#fetchedAt >= cacheMaxAgeMs) local = await this.#reload();
    try {
      return await local(header, token);
    } catch (err) {
      if (!(err instanceof errors.JWKSNoMatchingKey) || now() - this.#fetchedAt < cooldownMs) throw err;
      return (await this.#reload())(header, token);
    }
  };

  async #reload(): Promise<ReturnType<typeof createLocalJWKSet>> {
    this.#pending ??= this.#fetch().finally(() => {
      this.#pending = null;
    });
    await this.#pending;
    return this.#local as ReturnType<typeof createLocalJWKSet>;
  }

  async #fetch(): Promise<void> {
    let response: Response;
    try {
      response = await fetch(this.#url, {
        method: 'GET',
        redirect: 'manual',
        signal: AbortSignal.timeout(this.#options.timeoutMs),
        headers: { accept: 'application/json, application/jwk-set+json' },
      });
    } catch (err) {
      throw err instanceof Error && err.name === 'TimeoutError'
        ? new errors.JWKSTimeout(undefined, { cause: err })
        : err;
    }
    if (response.status !== 200) {
      await response.body?.cancel().catch(() => undefined);
      throw new errors.JOSEError('Expected 200 OK from the JSON Web Key Set HTTP response');
    }
    let json: unknown;
    try {
      json = await response.json();
    } catch (cause) {
      throw new errors.JOSEError('Failed to parse the JSON Web Key Set HTTP response as JSON', { cause });
    }
    this.#local = createLocalJWKSet(json as JSONWebKeySet); // JWKSInvalid when it is not a key set
    this.#fetchedAt = this.#options.now();
  }
}

/** Remote key sets by URL; each caches its keys and bounds refetches on unknown kids (cooldown). */
export class JwksCache {
  readonly #sets = new Map<string, JWTVerifyGetKey>();
  readonly #options: JwksOptions;

  constructor(options: Partial<JwksOptions> = {}) {
    this.#options = { ...DEFAULT_JWKS, ...options };
  }

  get(url: string): JWTVerifyGetKey {
    let set = this.#sets.get(url);
    if (!set) {
      set = new RemoteKeySet(url, this.#options).getKey;
      this.#sets.set(url, set);
    }
    return set;
  }

  /** Forgets key sets no tenant names any more. */
  retain(urls: ReadonlySet<string>): void {
    for (const url of this.#sets.keys()) if (!urls.has(url)) this.#sets.delete(url);
  }
}

interface TenantVerifier {
  tenant: Tenant;
  audiences: readonly string[];
  /** jwtVerify with the tenant's key and options, fixed when the snapshot is compiled; `now` per request. */
  verify(token: string, now: number): Promise<JWTPayload>;
  subjectClaim: string;
  userNameClaim: string;
}

const SAFE_HEADER_VALUE = /^[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?$/;

/** A claim as a header value: plain printable ASCII as is, anything else percent-encoded. */
function claimHeader(value: unknown): string | null {
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  if (typeof value !== 'string' || value === '') return null;
  if (SAFE_HEADER_VALUE.test(value)) return value;
  return encodeURIComponent(value.slice(0, 256));
}

function shown(value: string): string {
  return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value);
}

function audienceOf(payload: JWTPayload): string[] {
  const aud = payload.aud;
  if (typeof aud === 'string') return [aud];
  if (Array.isArray(aud)) return aud.filter((a): a is string => typeof a === 'string');
  return [];
}

function invalidToken(message: string): IdentifyResult {
  return unauthenticated('invalid_token', message);
}

export class JwtVerifiers {
  readonly #byIssuer = new Map<string, TenantVerifier[]>();

  constructor(tenants: readonly Tenant[], jwks: JwksCache, clockToleranceS: number) {
    const urls = new Set<string>();
    for (const tenant of tenants) {
      const jwt = tenant.jwt;
      if (!jwt) continue;
      const { jwksUrl, hsSecret } = jwt;
      if (jwksUrl === undefined && hsSecret === undefined) continue;
      const fixed = {
        issuer: jwt.issuer,
        audience: jwt.audiences.length > 0 ? [...jwt.audiences] : undefined,
        algorithms: jwksUrl !== undefined ? ASYMMETRIC : HMAC,
        clockTolerance: clockToleranceS,
        requiredClaims: ['exp'],
      };
      let verify: TenantVerifier['verify'];
      if (jwksUrl !== undefined) {
        urls.add(jwksUrl);
        const getKey = jwks.get(jwksUrl);
        verify = async (token, now) =>
          (await jwtVerify(token, getKey, { ...fixed, currentDate: new Date(now) })).payload;
      } else {
        const secret = new TextEncoder().encode(hsSecret);
        verify = async (token, now) =>
          (await jwtVerify(token, secret, { ...fixed, currentDate: new Date(now) })).payload;
      }
      const verifier: TenantVerifier = {
        tenant,
        audiences: jwt.audiences,
        verify,
        subjectClaim: jwt.subjectClaim,
        userNameClaim: jwt.userNameClaim,
      };
      const list = this.#byIssuer.get(jwt.issuer) ?? [];
      list.push(verifier);
      this.#byIssuer.set(jwt.issuer, list);
    }
    jwks.retain(urls);
  }

  get size(): number {
    return this.#byIssuer.size;
  }

  /** The tenant a token claims to belong to, by issuer and audience; unverified. */
  #pick(payload: JWTPayload): TenantVerifier | IdentifyResult {
    const iss = payload.iss;
    if (typeof iss !== 'string') return invalidToken('the token has no issuer (iss)');
    const candidates = this.#byIssuer.get(iss);
    if (!candidates) return invalidToken(`no tenant accepts tokens from issuer ${shown(iss)}`);
    const aud = audienceOf(payload);
    const byAudience = candidates.filter((c) => c.audiences.some((a) => aud.includes(a)));
    const chosen = byAudience.length > 0 ? byAudience : candidates.filter((c) => c.audiences.length === 0);
    if (chosen.length === 0) {
      return invalidToken(`the token's audience is not accepted by any tenant of issuer ${shown(iss)}`);
    }
    if (chosen.length > 1) {
      // Two tenants share issuer and audience: which one pays is undecidable, so nobody does.
      return invalidToken(`more than one tenant accepts issuer ${shown(iss)} with this audience`);
    }
    return chosen[0] as TenantVerifier;
  }

  async verify(token: string, now: number): Promise<IdentifyResult> {
    let claimed: JWTPayload;
    try {
      claimed = decodeJwt(token);
    } catch {
      return invalidToken('the bearer token is not a well-formed JWT');
    }
    const v = this.#pick(claimed);
    if ('ok' in v) return v;
    let payload: JWTPayload;
    try {
      payload = await v.verify(token, now);
    } catch (err) {
      return this.#failure(err);
    }
    const tenant = v.tenant;
    const userId = claimHeader(payload[v.subjectClaim]);
    if (userId === null) return invalidToken(`the token has no ${shown(v.subjectClaim)} claim`);
    if (tenant.suspended) return forbidden('tenant_suspended', `tenant ${tenant.id} is suspended`);
    return {
      ok: true,
      principal: { tenant, key: null, userId, userName: claimHeader(payload[v.userNameClaim]) },
    };
  }

  #failure(err: unknown): IdentifyResult {
    if (err instanceof errors.JWTExpired) return unauthenticated('token_expired', 'the token has expired');
    if (err instanceof errors.JWTClaimValidationFailed) {
      return invalidToken(`the token's ${shown(err.claim)} claim is not accepted (${err.reason})`);
    }
    if (err instanceof errors.JOSEAlgNotAllowed) {
      return invalidToken("the token's signing algorithm is not accepted for its issuer");
    }
    if (err instanceof errors.JWKSNoMatchingKey) {
      return invalidToken("no key of the issuer's key set matches the token (kid)");
    }
    if (
      err instanceof errors.JWKSTimeout ||
      (err instanceof errors.JOSEError && err.code === 'ERR_JOSE_GENERIC') ||
      // fetch() failing to connect: the key set is unreachable, not the token wrong.
      err instanceof TypeError
    ) {
      return {
        ok: false,
        error: gatewayError(
          503,
          'overloaded_error',
          'jwks_unavailable',
          "the issuer's key set could not be fetched; retry",
          { 'retry-after': '5' },
        ),
      };
    }
    if (err instanceof errors.JOSEError) return invalidToken('the token signature or format is not valid');
    return invalidToken('the token could not be verified');
  }
}
