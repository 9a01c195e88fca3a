// The minimal identity step: an API key from `Authorization: Bearer` or `x-api-key`, checked for
// shape and checksum before any lookup, then found by its SHA-256 in the key index compiled from the
// snapshot. JWT and per-key CIDRs come with the identity issue; this function is the seam.
import type { IncomingHttpHeaders } from 'node:http';
import type { ApiKey, Tenant } from '../config/snapshot.ts';
import { gatewayError, type GatewayError } from '../errors.ts';
import { checkKeyShape, hashApiKey } from './keys.ts';

export interface Principal {
  tenant: Tenant;
  /** Null for principals that did not come from an API key (JWT, later). */
  key: ApiKey | null;
  userId: string | null;
  userName: string | null;
}

export interface KeyEntry {
  key: ApiKey;
  tenant: Tenant;
  /** Epoch ms, or Infinity for keys that never expire. */
  expiresAtMs: number;
}

/** SHA-256 (hex) → key and its tenant; built once per snapshot. */
export type KeyIndex = ReadonlyMap<string, KeyEntry>;

export function buildKeyIndex(keys: readonly ApiKey[], tenants: readonly Tenant[]): KeyIndex {
  const byId = new Map(tenants.map((t) => [t.id, t]));
  const index = new Map<string, KeyEntry>();
  for (const key of keys) {
    const tenant = byId.get(key.tenant);
    if (!tenant) continue; // validate.ts refuses such snapshots; skip defensively
    index.set(key.sha256, {
      key,
      tenant,
      expiresAtMs: key.expiresAt === null ? Infinity : Date.parse(key.expiresAt),
    });
  }
  return index;
}

export type IdentifyResult = { ok: true; principal: Principal } | { ok: false; error: GatewayError };

function credentialOf(headers: IncomingHttpHeaders): string | null {
  const auth = headers.authorization;
  if (auth !== undefined) {
    // RFC 9110: the scheme is case-insensitive.
    if (auth.length > 7 && auth.slice(0, 7).toLowerCase() === 'bearer ') return auth.slice(7).trim();
    return null;
  }
  const apiKey = headers['x-api-key'];
  if (typeof apiKey === 'string') return apiKey.trim();
  return null;
}

function unauthenticated(code: string, message: string): IdentifyResult {
  return {
    ok: false,
    error: gatewayError(401, 'authentication_error', code, message, { 'www-authenticate': 'Bearer' }),
  };
}

/** Authenticates a request. Messages say what is wrong with the credential and never echo it. */
export function identify(headers: IncomingHttpHeaders, index: KeyIndex, now: number): IdentifyResult {
  const credential = credentialOf(headers);
  if (credential === null || credential === '') {
    return unauthenticated(
      'missing_credentials',
      'no credentials: send an API key as "Authorization: Bearer <key>" or "x-api-key: <key>"',
    );
  }
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
  const entry = index.get(hashApiKey(credential));
  if (!entry) return unauthenticated('unknown_api_key', 'the API key is not known to this gateway');
  const { key, tenant } = entry;
  if (key.disabled) return unauthenticated('key_disabled', `API key ${key.prefix}… is disabled`);
  if (now >= entry.expiresAtMs) {
    return unauthenticated('key_expired', `API key ${key.prefix}… expired at ${key.expiresAt ?? ''}`);
  }
  if (tenant.suspended) {
    return {
      ok: false,
      error: gatewayError(403, 'permission_error', 'tenant_suspended', `tenant ${tenant.id} is suspended`),
    };
  }
  return { ok: true, principal: { tenant, key, userId: null, userName: null } };
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
