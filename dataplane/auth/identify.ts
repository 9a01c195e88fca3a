// Identity from an API key: `Authorization: Bearer <key>` or `x-api-key: <key>`, checked for shape
// and checksum before any lookup, then found by its SHA-256 in the key index compiled from the
// snapshot. JWTs are told apart here (credentialOf) and verified in jwt.ts; the admission step
// (dataplane/admission) puts both together.
import type { IncomingHttpHeaders } from 'node:http';
import { BlockList } from 'node:net';
import type { ApiKey, Tenant } from '../config/snapshot.ts';
import { gatewayError, type GatewayError } from '../errors.ts';
import { addressIn, compileCidrs } from './cidr.ts';
import { checkKeyShape, hashApiKey, KEY_SCHEME } from './keys.ts';

export interface Principal {
  tenant: Tenant;
  /** Null for principals that did not come from an API key (JWT). */
  key: ApiKey | null;
  userId: string | null;
  userName: string | null;
}

export interface KeyEntry {
  key: ApiKey;
  tenant: Tenant;
  /** Epoch ms, or Infinity for keys that never expire. */
  expiresAtMs: number;
  /** The key's allowedCIDRs, parsed; null when the key may be used from anywhere. */
  cidrs: BlockList | null;
  /** What a successful authentication with this key returns: built on its first one, then reused. */
  authenticated: { ok: true; principal: Principal } | null;
}

/** SHA-256 (hex) → key and its tenant; built once per snapshot. */
export type KeyIndex = ReadonlyMap<string, KeyEntry>;

/** Keys whose allowedCIDRs do not parse get an empty list: they are refused everywhere, never widened. */
export function buildKeyIndex(
  keys: readonly ApiKey[],
  tenants: readonly Tenant[],
  onProblem?: (keyId: string, message: string) => void,
): KeyIndex {
  const byId = new Map(tenants.map((t) => [t.id, t]));
  const index = new Map<string, KeyEntry>();
  for (const key of keys) {
    const tenant = byId.get(key.tenant);
    if (!tenant) continue; // validate.ts refuses such snapshots; skip defensively
    let cidrs: BlockList | null = null;
    if (key.allowedCIDRs.length > 0) {
      const parsed = compileCidrs(key.allowedCIDRs);
      if (parsed.ok) cidrs = parsed.list;
      else {
        onProblem?.(key.id, `allowedCIDRs: ${parsed.message}; the key is refused from every address`);
        cidrs = new BlockList();
      }
    }
    index.set(key.sha256, {
      key,
      tenant,
      expiresAtMs: key.expiresAt === null ? Infinity : Date.parse(key.expiresAt),
      cidrs,
      authenticated: null,
    });
  }
  return index;
}

export type IdentifyResult = { ok: true; principal: Principal } | { ok: false; error: GatewayError };

export type Credential =
  | { kind: 'none' }
  | { kind: 'malformed'; message: string }
  | { kind: 'key'; key: string }
  | { kind: 'jwt'; token: string };

/** Longer credentials are refused unread: no key or sane JWT comes near this. */
const MAX_CREDENTIAL_LENGTH = 8192;
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** Where the credential is and what it looks like. `Authorization` wins over `x-api-key`. */
export function credentialOf(headers: IncomingHttpHeaders): Credential {
  const auth = headers.authorization;
  let value: string;
  if (auth !== undefined) {
    // RFC 9110: the scheme is case-insensitive; one or more spaces separate it from the token.
    if (auth.length <= 7 || auth.slice(0, 7).toLowerCase() !== 'bearer ') {
      return auth.trim() === ''
        ? { kind: 'none' }
        : { kind: 'malformed', message: 'the Authorization header must use the Bearer scheme' };
    }
    value = auth.slice(7).trim();
  } else {
    const apiKey = headers['x-api-key'];
    if (typeof apiKey !== 'string') return { kind: 'none' };
    value = apiKey.trim();
  }
  if (value === '') return { kind: 'none' };
  if (value.length > MAX_CREDENTIAL_LENGTH) {
    return {
      kind: 'malformed',
      message: `the credential is longer than ${MAX_CREDENTIAL_LENGTH} characters`,
    };
  }
  if (value.startsWith(KEY_SCHEME)) return { kind: 'key', key: value };
  if (JWT_SHAPE.test(value)) return { kind: 'jwt', token: value };
  return {
    kind: 'malformed',
    message: 'the credential is not a gpugate API key (expected gpg_ and 36 letters or digits)',
  };
}

export function unauthenticated(code: string, message: string): { ok: false; error: GatewayError } {
  return {
    ok: false,
    error: gatewayError(401, 'authentication_error', code, message, { 'www-authenticate': 'Bearer' }),
  };
}

export function forbidden(code: string, message: string): { ok: false; error: GatewayError } {
  return { ok: false, error: gatewayError(403, 'permission_error', code, message) };
}

export const MISSING_CREDENTIALS =
  'no credentials: send an API key as "Authorization: Bearer <key>" or "x-api-key: <key>"';

/** The key's index entry after the shape and checksum checks and the SHA-256 lookup; a 401 otherwise. */
export function findKey(credential: string, index: KeyIndex): KeyEntry | { ok: false; error: GatewayError } {
  const shape = checkKeyShape(credential);
  if (shape === 'not-a-gpugate-key') {
    return unauthenticated(
      'invalid_api_key',
      'the credential is not a gpugate API key (expected gpg_ and 36 letters or digits)',
    );
  }
  if (shape === 'bad-checksum') {
    return unauthenticated(
      'invalid_api_key',
      'the API key checksum does not match: the key is mistyped or truncated',
    );
  }
  return (
    index.get(hashApiKey(credential)) ??
    unauthenticated('unknown_api_key', 'the API key is not known to this gateway')
  );
}

/** What a known key may do now: disabled, expired, suspended tenant, client address outside its CIDRs. */
export function checkKeyEntry(entry: KeyEntry, now: number, clientIp: string | null): IdentifyResult {
  const { key, tenant } = entry;
  if (key.disabled) return unauthenticated('key_disabled', `API key ${key.prefix}… is disabled`);
  if (now >= entry.expiresAtMs) {
    return unauthenticated('key_expired', `API key ${key.prefix}… expired at ${key.expiresAt ?? ''}`);
  }
  if (tenant.suspended) return forbidden('tenant_suspended', `tenant ${tenant.id} is suspended`);
  if (entry.cidrs !== null && (clientIp === null || !addressIn(entry.cidrs, clientIp))) {
    return forbidden(
      'ip_not_allowed',
      `API key ${key.prefix}… may not be used from ${clientIp ?? 'an unknown address'} (see the key's allowedCIDRs)`,
    );
  }
  // Built lazily: a snapshot of 100k keys would otherwise carry two more objects per key.
  return (entry.authenticated ??= { ok: true, principal: { tenant, key, userId: null, userName: null } });
}

/**
 * API-key identity from headers (JWTs are refused here; the admission step handles them). Messages
 * say what is wrong with the credential and never echo it.
 */
export function identify(
  headers: IncomingHttpHeaders,
  index: KeyIndex,
  now: number,
  clientIp: string | null = null,
): IdentifyResult {
  const credential = credentialOf(headers);
  switch (credential.kind) {
    case 'none':
      return unauthenticated('missing_credentials', MISSING_CREDENTIALS);
    case 'malformed':
      return unauthenticated('invalid_api_key', credential.message);
    case 'jwt':
      return unauthenticated('invalid_api_key', 'the credential is not a gpugate API key');
    case 'key': {
      const found = findKey(credential.key, index);
      return 'ok' in found ? found : checkKeyEntry(found, now, clientIp);
    }
  }
}

function listAllows(list: readonly string[], model: string): boolean {
  return list.length === 0 || list.includes(model) || list.includes('*');
}

/** True when both the tenant's and the key's allowedModels (empty: all) admit the model. */
export function modelAllowed(principal: Principal, model: string): boolean {
  return (
    listAllows(principal.tenant.allowedModels, model) &&
    (principal.key === null || listAllows(principal.key.allowedModels, model))
  );
}

export function backendAllowed(principal: Principal, backendId: string): boolean {
  const allowed = principal.tenant.allowedBackends;
  return allowed.length === 0 || allowed.includes(backendId);
}
