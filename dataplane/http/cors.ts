// Gateway-level CORS (Fetch standard). A preflight (OPTIONS with Origin and
// Access-Control-Request-Method) is answered here: it never needs credentials, never reaches
// routing, identity or a backend. Other requests from an allowed origin get the response headers
// that let the browser read the answer. Compiled once per snapshot; no CORS settings, no CORS.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Cors } from '../config/snapshot.ts';
import { gatewayError, gatewayHeaders, sendGatewayError } from '../errors.ts';

export interface CompiledCors {
  anyOrigin: boolean;
  origins: ReadonlySet<string>;
  methods: ReadonlySet<string>;
  methodsValue: string;
  /** Lower-case names; null reflects whatever the preflight asks for. */
  headers: ReadonlySet<string> | null;
  headersValue: string;
  exposedValue: string;
  credentials: boolean;
  maxAge: string;
}

/** Headers a browser script may read by default: gateway headers a client needs. */
const ALWAYS_EXPOSED = [
  'x-request-id',
  'retry-after',
  'x-ratelimit-limit',
  'x-ratelimit-remaining',
  'x-ratelimit-reset',
  'x-ratelimit-scope',
];

export function compileCors(cors: Cors | undefined): CompiledCors | null {
  if (!cors || cors.allowedOrigins.length === 0) return null;
  const methods = cors.allowedMethods.length > 0 ? cors.allowedMethods : ['GET', 'HEAD', 'POST'];
  const headers = cors.allowedHeaders.map((h) => h.toLowerCase());
  const exposed = [...new Set([...ALWAYS_EXPOSED, ...cors.exposedHeaders.map((h) => h.toLowerCase())])];
  return {
    anyOrigin: cors.allowedOrigins.includes('*'),
    origins: new Set(cors.allowedOrigins),
    methods: new Set(methods),
    methodsValue: methods.join(', '),
    headers: headers.length > 0 ? new Set(headers) : null,
    headersValue: headers.join(', '),
    exposedValue: exposed.join(', '),
    credentials: cors.allowCredentials,
    maxAge: String(cors.maxAgeSeconds),
  };
}

function allowedOrigin(c: CompiledCors, origin: string): boolean {
  return c.anyOrigin || c.origins.has(origin);
}

/** The Access-Control-Allow-Origin value: `*` only where credentials cannot be involved. */
function originValue(c: CompiledCors, origin: string): string {
  return c.anyOrigin && !c.credentials ? '*' : origin;
}

export type PreflightAnswer =
  { status: 204; headers: Record<string, string> } | { status: 403; reason: string };

export function isPreflight(req: IncomingMessage): boolean {
  return (
    req.method === 'OPTIONS' &&
    typeof req.headers.origin === 'string' &&
    typeof req.headers['access-control-request-method'] === 'string'
  );
}

/** What to answer a preflight. A refused preflight gets no CORS headers, so the browser blocks the call. */
export function answerPreflight(c: CompiledCors, req: IncomingMessage): PreflightAnswer {
  const origin = req.headers.origin as string;
  const method = (req.headers['access-control-request-method'] as string).trim().toUpperCase();
  if (!allowedOrigin(c, origin))
    return { status: 403, reason: `origin ${JSON.stringify(origin)} is not allowed` };
  if (!c.methods.has(method))
    return { status: 403, reason: `method ${JSON.stringify(method)} is not allowed` };
  const requested = req.headers['access-control-request-headers'];
  const asked =
    typeof requested === 'string'
      ? requested
          .split(',')
          .map((h) => h.trim().toLowerCase())
          .filter((h) => h !== '')
      : [];
  if (c.headers !== null) {
    for (const h of asked) {
      if (!c.headers.has(h))
        return { status: 403, reason: `request header ${JSON.stringify(h)} is not allowed` };
    }
  }
  const headers: Record<string, string> = {
    'access-control-allow-origin': originValue(c, origin),
    'access-control-allow-methods': c.methodsValue,
    'access-control-max-age': c.maxAge,
    vary: 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers',
  };
  const allowHeaders = c.headers === null ? asked.join(', ') : c.headersValue;
  if (allowHeaders !== '') headers['access-control-allow-headers'] = allowHeaders;
  if (c.credentials) headers['access-control-allow-credentials'] = 'true';
  return { status: 204, headers };
}

/** For a non-preflight request from an allowed origin: the CORS headers its response carries. */
export function stampCors(c: CompiledCors, req: IncomingMessage, res: ServerResponse): void {
  const origin = req.headers.origin;
  if (typeof origin !== 'string' || !allowedOrigin(c, origin)) return;
  res.setHeader('access-control-allow-origin', originValue(c, origin));
  res.setHeader('access-control-expose-headers', c.exposedValue);
  if (c.credentials) res.setHeader('access-control-allow-credentials', 'true');
  if (!c.anyOrigin || c.credentials) res.setHeader('vary', 'Origin');
}

/**
 * The proxy's onRequest hook: answers preflights, stamps CORS headers on other requests from
 * allowed origins. Requests without Origin (every non-browser client) pass untouched.
 */
export function corsHook(current: () => CompiledCors | null, version: string) {
  return (request: FastifyRequest, reply: FastifyReply, done: () => void): void => {
    const req = request.raw;
    const c = req.headers.origin === undefined ? null : current();
    if (c === null) return done();
    if (!isPreflight(req)) {
      stampCors(c, req, reply.raw);
      return done();
    }
    const answer = answerPreflight(c, req);
    if (answer.status === 204) {
      void reply
        .code(204)
        .headers({ ...gatewayHeaders(request.id, version), ...answer.headers })
        .send();
      return;
    }
    void sendGatewayError(
      reply,
      request.id,
      version,
      gatewayError(
        403,
        'permission_error',
        'cors_preflight_refused',
        `CORS preflight refused: ${answer.reason}`,
      ),
    );
  };
}
