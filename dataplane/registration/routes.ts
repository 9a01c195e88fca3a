// POST /webhook/register and /webhook/unregister on the public port: an external GPU server announces
// (and renews, and withdraws) itself as an endpoint of a GpuBackend whose spec.registration is set.
// It proves it may do so with the backend's shared secret in REGISTRATION_SECRET_HEADER; the snapshot
// holds only the secret's SHA-256, and the SHA-256 of what was sent is compared with it in constant
// time. The registration is recorded in the store (Postgres: every replica and the operator see it);
// the operator puts live registrations into the next snapshot, where they are health checked like
// every endpoint. Nothing here changes the running snapshot itself.
//
// A wrong secret is a failed authentication like a wrong API key: it spends the client address's
// budget of failed authentications (settings.clientLimits.authFailuresPerMinute, shared with the
// proxy's keys and JWTs), and an address over that budget gets 429 before its secret is checked, so
// the shared secret cannot be guessed at line rate.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Backend } from '../config/snapshot.ts';
import type { CompiledAdmission } from '../admission/admission.ts';
import { gatewayError, gatewayHeaders, sendGatewayError, type GatewayError } from '../errors.ts';
import type { RegistrationStore } from './store.ts';

export const REGISTRATION_SECRET_HEADER = 'x-gpugate-registration-secret';

export interface RegistrationRoutesDeps {
  /** The backends of the current snapshot; null before the first one. */
  backends(): readonly Backend[] | null;
  /** The current snapshot's admission (client address, failed-authentication budget); null before the first one. */
  admission(): CompiledAdmission | null;
  /** null: no database, registrations cannot be recorded (503). */
  store: RegistrationStore | null;
  logger: Logger;
  version: string;
}

interface Body {
  backend?: unknown;
  url?: unknown;
}

/** An endpoint URL as recorded: http(s), no credentials, query or fragment; no trailing slash. */
export function normalizeEndpointUrl(raw: unknown): string | null {
  if (typeof raw !== 'string' || raw.length === 0 || raw.length > 2048) return null;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return null;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
  if (u.username || u.password || u.search || u.hash) return null;
  const path = u.pathname.replace(/\/+$/, '');
  return `${u.origin}${path}`;
}

function secretMatches(sent: string, secretSha256: string): boolean {
  const expected = Buffer.from(secretSha256, 'hex');
  const actual = createHash('sha256').update(sent, 'utf8').digest();
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}

/**
 * The backend a request may act on: among the backends with registration on whose id is `ref`
 * (namespace/name) or whose name is `ref`, the ones whose secret matches. Every candidate is checked,
 * so an unknown backend and a wrong secret look alike (401) and take the same path.
 */
export function resolveBackend(
  backends: readonly Backend[],
  ref: string,
  secret: string,
): { ok: true; backend: Backend } | { ok: false; status: 400 | 401 } {
  const matching: Backend[] = [];
  for (const b of backends) {
    if (!b.registration) continue;
    if (b.id !== ref && b.id.slice(b.id.indexOf('/') + 1) !== ref) continue;
    if (secretMatches(secret, b.registration.secretSha256)) matching.push(b);
  }
  if (matching.length === 1) return { ok: true, backend: matching[0]! };
  return { ok: false, status: matching.length === 0 ? 401 : 400 };
}

export function registrationRoutes(deps: RegistrationRoutesDeps) {
  const headers = (request: FastifyRequest) => gatewayHeaders(request.id, deps.version);
  const send = (reply: FastifyReply, request: FastifyRequest, err: GatewayError) =>
    sendGatewayError(reply, request.id, deps.version, err);

  /** Checks the request; answers and returns null when it cannot proceed. */
  const authorize = (request: FastifyRequest, reply: FastifyReply) => {
    const backends = deps.backends();
    if (!backends) {
      void send(
        reply,
        request,
        gatewayError(503, 'overloaded_error', 'not_ready', 'the gateway has no configuration yet', {
          'retry-after': '1',
        }),
      );
      return null;
    }
    const admission = deps.admission();
    const ip = admission?.clientIp(request.raw) ?? '';
    const now = Date.now();
    const throttled = admission?.refuseFailingAddress(ip, now);
    if (throttled) {
      void send(reply, request, throttled);
      return null;
    }
    const body = (request.body ?? {}) as Body;
    const url = normalizeEndpointUrl(body.url);
    if (typeof body.backend !== 'string' || body.backend.length === 0 || url === null) {
      void send(
        reply,
        request,
        gatewayError(
          400,
          'invalid_request_error',
          'invalid_registration',
          'the body must be JSON {"backend": "<namespace>/<name> or <name>", "url": "http(s)://host:port[/path]"}',
        ),
      );
      return null;
    }
    const sent = request.headers[REGISTRATION_SECRET_HEADER];
    const resolved = resolveBackend(backends, body.backend, typeof sent === 'string' ? sent : '');
    if (!resolved.ok) {
      // Sending no secret guesses nothing (as a request without a credential on the proxy).
      if (resolved.status === 401 && typeof sent === 'string') admission?.countFailure(ip, now);
      void send(
        reply,
        request,
        resolved.status === 401
          ? gatewayError(
              401,
              'authentication_error',
              'invalid_registration_secret',
              `unknown backend, registration not enabled, or wrong ${REGISTRATION_SECRET_HEADER}`,
            )
          : gatewayError(
              400,
              'invalid_request_error',
              'ambiguous_backend',
              'more than one backend has this name and secret: name it as <namespace>/<name>',
            ),
      );
      return null;
    }
    if (!deps.store) {
      void send(
        reply,
        request,
        gatewayError(
          503,
          'overloaded_error',
          'registration_unavailable',
          'this data plane has no database to record registrations in',
        ),
      );
      return null;
    }
    return { backend: resolved.backend, url, store: deps.store };
  };

  return async function registration(app: FastifyInstance): Promise<void> {
    const opts = { bodyLimit: 16 * 1024 };
    app.post('/webhook/register', opts, async (request, reply) => {
      const ok = authorize(request, reply);
      if (!ok) return reply;
      const ttlMs = ok.backend.registration!.ttlMs;
      const result = await ok.store.register(ok.backend.id, ok.url, ttlMs);
      if (!result.ok) {
        return send(
          reply,
          request,
          gatewayError(
            409,
            'invalid_request_error',
            'too_many_endpoints',
            `backend ${ok.backend.id} has the most registered endpoints it may have`,
          ),
        );
      }
      if (result.created) {
        deps.logger.info({ backend: ok.backend.id, url: ok.url, ttlMs }, 'endpoint registered');
      }
      return reply
        .code(result.created ? 201 : 200)
        .headers(headers(request))
        .send({
          backend: ok.backend.id,
          url: ok.url,
          ttlMs,
          expiresAt: result.expiresAt.toISOString(),
        });
    });
    app.post('/webhook/unregister', opts, async (request, reply) => {
      const ok = authorize(request, reply);
      if (!ok) return reply;
      const removed = await ok.store.unregister(ok.backend.id, ok.url);
      if (removed) deps.logger.info({ backend: ok.backend.id, url: ok.url }, 'endpoint unregistered');
      return reply.code(200).headers(headers(request)).send({ backend: ok.backend.id, url: ok.url, removed });
    });
  };
}
