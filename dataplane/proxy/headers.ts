// Header handling on the way to the backend and back: hop-by-hop headers (RFC 9110 §7.6.1) are
// removed, identity headers the client may have spoofed are removed before the gateway sets them
// from the verified principal, and the client's own gateway credential never goes upstream.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** Request headers never forwarded as the client sent them. */
const DROP_ON_REQUEST = new Set([
  ...HOP_BY_HOP,
  'host',
  'expect',
  'authorization',
  'x-api-key',
  'x-user-id',
  'x-username',
  // Identity headers that auth proxies (oauth2-proxy, ingress auth) set and backends often trust.
  'x-forwarded-user',
  'x-forwarded-email',
  'x-forwarded-groups',
  'x-forwarded-preferred-username',
  'x-auth-request-user',
  'x-auth-request-email',
  'x-auth-request-groups',
  'x-auth-request-preferred-username',
  'x-remote-user',
  'remote-user',
  'x-forwarded-for',
]);

/** Headers whose names start with this are the gateway's own; clients may not set them. */
const GATEWAY_PREFIX = 'x-gpugate-';

export interface UpstreamIdentity {
  tenant: string | null;
  userId: string | null;
  userName: string | null;
}

export interface ForwardContext {
  requestId: string;
  clientIp: string;
  /** 'http' or 'https' as the client reached us. */
  proto: string;
  /** Our Via entry, e.g. `1.1 gpugate (3f2a…)`. */
  via: string;
  identity: UpstreamIdentity;
  upstreamAuth: { header: string; value: string } | null;
}

const NO_TOKENS: readonly string[] = [];

function connectionTokens(value: string | undefined): readonly string[] {
  // The usual values name no other header: skip the split (most upstream responses say keep-alive).
  if (!value || value === 'keep-alive' || value === 'close') return NO_TOKENS;
  return value
    .toLowerCase()
    .split(',')
    .map((t) => t.trim())
    .filter((t) => t !== '');
}

export function upstreamRequestHeaders(
  incoming: IncomingHttpHeaders,
  ctx: ForwardContext,
): Record<string, string> {
  const out: Record<string, string> = {};
  const extraHop = connectionTokens(incoming.connection);
  for (const name in incoming) {
    if (DROP_ON_REQUEST.has(name) || name.startsWith(GATEWAY_PREFIX)) continue;
    if (extraHop.length > 0 && extraHop.includes(name)) continue;
    const value = incoming[name];
    if (value === undefined) continue;
    // Node joins repeated headers with ', ' except set-cookie (an array, never sent by clients here).
    out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  const xff = incoming['x-forwarded-for'];
  out['x-forwarded-for'] = xff ? `${xff}, ${ctx.clientIp}` : ctx.clientIp;
  if (!out['x-forwarded-proto']) out['x-forwarded-proto'] = ctx.proto;
  if (!out['x-forwarded-host'] && incoming.host) out['x-forwarded-host'] = incoming.host;
  out.via = incoming.via ? `${incoming.via}, ${ctx.via}` : ctx.via;
  out['x-request-id'] = ctx.requestId;
  const { tenant, userId, userName } = ctx.identity;
  if (tenant !== null) out['x-gpugate-tenant'] = tenant;
  if (userId !== null) out['x-user-id'] = userId;
  if (userName !== null) out['x-username'] = userName;
  if (ctx.upstreamAuth) out[ctx.upstreamAuth.header.toLowerCase()] = ctx.upstreamAuth.value;
  return out;
}

const DROP_ON_RESPONSE = new Set([
  ...HOP_BY_HOP,
  'x-gpugate-version',
  'x-gpugate-backend',
  'x-request-id',
  'via',
]);

export interface ResponseStamp {
  requestId: string;
  version: string;
  /** Null when the backend header is disabled. */
  backend: string | null;
}

/** Upstream response headers as sent to the client, with the gateway's own added. */
export function downstreamResponseHeaders(
  upstream: Record<string, string | string[] | undefined>,
  stamp: ResponseStamp,
): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  const extraHop = connectionTokens(
    typeof upstream.connection === 'string' ? upstream.connection : undefined,
  );
  for (const name in upstream) {
    if (DROP_ON_RESPONSE.has(name)) continue;
    if (extraHop.length > 0 && extraHop.includes(name)) continue;
    const value = upstream[name];
    if (value !== undefined) out[name] = value;
  }
  const via = upstream.via;
  out.via = via ? `${Array.isArray(via) ? via.join(', ') : via}, 1.1 gpugate` : '1.1 gpugate';
  out['x-request-id'] = stamp.requestId;
  out['x-gpugate-version'] = stamp.version;
  if (stamp.backend !== null) out['x-gpugate-backend'] = stamp.backend;
  return out;
}

const SANE_REQUEST_ID = /^[A-Za-z0-9._:+=/-]{1,128}$/;

/** An incoming X-Request-Id is kept when it is short and plain; anything else is replaced. */
export function saneRequestId(value: string | string[] | undefined): string | null {
  return typeof value === 'string' && SANE_REQUEST_ID.test(value) ? value : null;
}
