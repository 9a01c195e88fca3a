// Usage over HTTP. On the public port, GET /v1/usage answers the caller's own tenant and key (same
// credentials as any request); on the admin port, any tenant's usage and top-ups (admin token).
// Both read dataplane/usage/queries.ts, like the CLI and the Tenant status.
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Runtime } from '../routing/runtime.ts';
import { requireBearer } from '../admin/admin.ts';
import { gatewayError, gatewayHeaders, sendGatewayError, type GatewayError } from '../errors.ts';
import {
  dayProblem,
  periodDays,
  quotaState,
  topUp,
  usageReport,
  type Db,
  type UsageReport,
} from './queries.ts';

export interface UsageApiDeps {
  /** The usage database; null when this gateway records no usage (the routes answer 503). */
  db: Db | null;
  current(): Runtime | null;
  version: string;
  now?: () => number;
}

interface RangeQuery {
  from?: string;
  to?: string;
}

/** The report range from ?from=&to= (UTC days), defaulting to the current quota period. */
function rangeOf(
  query: RangeQuery,
  period: Parameters<typeof periodDays>[0],
  now: number,
): { from: string | null; to: string } | string {
  for (const name of ['from', 'to'] as const) {
    const value = query[name];
    if (value !== undefined) {
      const problem = dayProblem(name, value);
      if (problem) return problem;
    }
  }
  const days = periodDays(period, now);
  const from = query.from ?? days.from;
  const to = query.to ?? (query.from !== undefined && query.from > days.to ? query.from : days.to);
  if (from !== null && from > to) return `from (${from}) is after to (${to})`;
  return { from, to };
}

function unavailable(): GatewayError {
  return gatewayError(
    503,
    'overloaded_error',
    'usage_unavailable',
    'this gateway does not record usage (it was started without a usage database)',
  );
}

/** GET /v1/usage on the public port. */
export function usageRoutes(deps: UsageApiDeps) {
  const now = deps.now ?? Date.now;
  return async function usage(app: FastifyInstance): Promise<void> {
    app.get<{ Querystring: RangeQuery }>('/v1/usage', async (request, reply) => {
      const rt = deps.current();
      if (!rt) {
        return sendGatewayError(
          reply,
          request.id,
          deps.version,
          gatewayError(503, 'overloaded_error', 'not_ready', 'the gateway has no configuration yet', {
            'retry-after': '1',
          }),
        );
      }
      const at = now();
      // The request path's own authentication: API keys (with their CIDRs), JWTs, per-address limits.
      const who = await rt.admission.authenticate(request.raw);
      if (!who.ok) return sendGatewayError(reply, request.id, deps.version, who.error);
      if (!deps.db) return sendGatewayError(reply, request.id, deps.version, unavailable());
      const { tenant, key } = who.principal;
      const range = rangeOf(request.query, tenant.quota?.period ?? null, at);
      if (typeof range === 'string') {
        return sendGatewayError(
          reply,
          request.id,
          deps.version,
          gatewayError(400, 'invalid_request_error', 'invalid_range', range),
        );
      }
      const [tenantUsage, keyUsage, tenantQuota, keyQuota] = await Promise.all([
        usageReport(deps.db, { tenant: tenant.id, ...range }),
        key ? usageReport(deps.db, { tenant: tenant.id, keyId: key.id, ...range }) : null,
        tenant.quota ? quotaState(deps.db, 'tenant', tenant.id, at) : null,
        key?.quota ? quotaState(deps.db, 'key', key.id, at) : null,
      ]);
      return reply
        .headers({ ...gatewayHeaders(request.id, deps.version), 'cache-control': 'no-store' })
        .send({
          object: 'usage',
          tenant: tenant.id,
          key: key ? { id: key.id, prefix: key.prefix } : null,
          from: range.from,
          to: range.to,
          quota: { tenant: tenantQuota, key: keyQuota },
          usage: reportBody(tenantUsage),
          keyUsage: keyUsage ? reportBody(keyUsage) : null,
        });
    });
  };
}

function reportBody(r: UsageReport) {
  return { totals: r.totals, byModel: r.byModel, byDay: r.byDay };
}

export interface AdminUsageDeps {
  db: Db | null;
  /** The admin (push) token; null disables these routes (401). */
  token: string | null;
  now?: () => number;
}

interface TenantParams {
  namespace: string;
  name: string;
}

const NAME = '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$';
const tenantParams = {
  type: 'object',
  properties: { namespace: { type: 'string', pattern: NAME }, name: { type: 'string', pattern: NAME } },
  required: ['namespace', 'name'],
} as const;

function adminError(reply: FastifyReply, status: number, code: string, message: string): FastifyReply {
  const type =
    status === 503 ? 'overloaded_error' : status === 404 ? 'not_found_error' : 'invalid_request_error';
  return reply.code(status).send({ error: { type, code, message } });
}

/**
 * On the admin port: GET /admin/tenants/<namespace>/<name>/usage[?from=&to=&key=<apikey name>] and
 * POST /admin/tenants/<namespace>/<name>/topup {credits, reference?}.
 */
export function adminUsageRoutes(deps: AdminUsageDeps) {
  const now = deps.now ?? Date.now;
  return async function adminUsage(app: FastifyInstance): Promise<void> {
    app.addHook('onRequest', async (request, reply) => {
      const refusal = {
        code: 'bad_admin_token',
        message: 'the admin API needs the admin token as a Bearer token',
      };
      if (!requireBearer(request, reply, deps.token, refusal)) return reply;
      if (!deps.db) return adminError(reply, 503, 'usage_unavailable', unavailable().message);
      return undefined;
    });

    app.get<{ Params: TenantParams; Querystring: RangeQuery & { key?: string } }>(
      '/admin/tenants/:namespace/:name/usage',
      {
        schema: {
          params: tenantParams,
          querystring: {
            type: 'object',
            properties: {
              from: { type: 'string' },
              to: { type: 'string' },
              key: { type: 'string', pattern: NAME },
            },
            additionalProperties: false,
          },
        },
      },
      async (request, reply) => {
        const db = deps.db as Db;
        const at = now();
        const tenant = `${request.params.namespace}/${request.params.name}`;
        const keyId = request.query.key ? `${request.params.namespace}/${request.query.key}` : null;
        const quota = await quotaState(db, 'tenant', tenant, at);
        const keyQuota = keyId ? await quotaState(db, 'key', keyId, at) : null;
        const range = rangeOf(request.query, quota?.period ?? null, at);
        if (typeof range === 'string') return adminError(reply, 400, 'invalid_range', range);
        const report = await usageReport(db, { tenant, keyId, ...range });
        return reply.header('cache-control', 'no-store').send({
          tenant,
          keyId,
          from: range.from,
          to: range.to,
          quota: { tenant: quota, key: keyQuota },
          ...reportBody(report),
        });
      },
    );

    app.post<{ Params: TenantParams; Body: { credits: number; reference?: string } }>(
      '/admin/tenants/:namespace/:name/topup',
      {
        schema: {
          params: tenantParams,
          body: {
            type: 'object',
            properties: {
              credits: { type: 'number', exclusiveMinimum: 0 },
              reference: { type: 'string', minLength: 1, maxLength: 256 },
            },
            required: ['credits'],
            additionalProperties: false,
          },
        },
      },
      async (request, reply) => {
        const tenant = `${request.params.namespace}/${request.params.name}`;
        const result = await topUp(deps.db as Db, {
          kind: 'tenant',
          id: tenant,
          credits: request.body.credits,
          ...(request.body.reference ? { reference: request.body.reference } : {}),
          now: now(),
        });
        if (!result.ok) return adminError(reply, 404, result.code, result.message);
        return reply.send({
          tenant,
          credited: result.credited,
          reference: result.reference,
          quota: result.state,
        });
      },
    );
  };
}
