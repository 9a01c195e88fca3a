// The admin surface, on its own port and never routed by the ingress: liveness, readiness (each check
// with its reason, dataplane/admin/readiness.ts), Prometheus metrics, endpoint status (health, ejection, load, gateway chains)
// and the snapshot push.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Registry } from 'prom-client';
import type { SnapshotProblem } from '../config/validate.ts';
import type { Readiness } from './readiness.ts';

export type ApplyResult =
  | { accepted: true; changed: boolean; revision: string }
  | { accepted: false; problems: SnapshotProblem[]; stale: boolean };

export interface AdminDeps {
  registry: Registry;
  /** The push token; null disables PUT /config. */
  pushToken: string | null;
  /** /readyz: every check with its reason (readiness()). */
  readiness(): Readiness;
  applySnapshot(input: unknown): ApplyResult;
  /** Endpoint health, load and in-flight counts per backend of the current runtime. */
  upstreams(): unknown;
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** Constant-time comparison of a presented bearer token with the expected one (lengths hidden by hashing). */
export function tokenMatches(presented: string | undefined, expected: string): boolean {
  if (presented === undefined || !presented.toLowerCase().startsWith('bearer ')) return false;
  return timingSafeEqual(digest(presented.slice(7).trim()), digest(expected));
}

/**
 * Whether the request carries `token` (null: none configured) as its Bearer token; when it does not,
 * answers 401 with WWW-Authenticate: Bearer, `headers` and the error `code` and `message`.
 */
export function requireBearer(
  request: FastifyRequest,
  reply: FastifyReply,
  token: string | null,
  error: { code: string; message: string },
  headers: Record<string, string> = {},
): boolean {
  if (token !== null && tokenMatches(request.headers.authorization, token)) return true;
  void reply
    .code(401)
    .headers({ 'www-authenticate': 'Bearer', ...headers })
    .send({ error: { type: 'authentication_error', ...error } });
  return false;
}

const problemSchema = {
  type: 'object',
  properties: { path: { type: 'string' }, message: { type: 'string' } },
  required: ['path', 'message'],
} as const;

export function adminPlugin(deps: AdminDeps) {
  return async function admin(app: FastifyInstance): Promise<void> {
    app.get('/healthz', async (_req, reply) => reply.send({ status: 'ok' }));

    app.get('/readyz', async (_req, reply) => {
      const r = deps.readiness();
      return reply.code(r.ready ? 200 : 503).send(r);
    });

    app.get('/metrics', async (_req, reply) => {
      const text = await deps.registry.metrics();
      return reply.header('content-type', deps.registry.contentType).send(text);
    });

    app.get('/upstreams', async (_req, reply) => reply.send(deps.upstreams()));

    app.put(
      '/config',
      {
        schema: {
          response: {
            200: {
              type: 'object',
              properties: { revision: { type: 'string' }, changed: { type: 'boolean' } },
              required: ['revision', 'changed'],
            },
            '4xx': {
              type: 'object',
              properties: {
                error: {
                  type: 'object',
                  properties: {
                    type: { type: 'string' },
                    code: { type: 'string' },
                    message: { type: 'string' },
                  },
                },
                problems: { type: 'array', items: problemSchema },
              },
            },
          },
        },
        // The token is checked before the body is read: without it, nobody makes this port read
        // and parse up to bodyLimit (256 MiB) of JSON.
        onRequest: async (request, reply) => {
          const refusal = {
            code: 'bad_push_token',
            message: 'PUT /config needs the push token as a Bearer token',
          };
          if (!requireBearer(request, reply, deps.pushToken, refusal, { connection: 'close' })) return reply;
        },
      },
      async (request, reply) => {
        const result = deps.applySnapshot(request.body);
        if (result.accepted) return reply.send({ revision: result.revision, changed: result.changed });
        const status = result.stale ? 409 : 400;
        return reply.code(status).send({
          error: {
            type: 'invalid_request_error',
            code: result.stale ? 'stale_snapshot' : 'invalid_snapshot',
            message: result.stale ? 'the snapshot is older than the one in use' : 'the snapshot was refused',
          },
          problems: result.problems,
        });
      },
    );
  };
}
