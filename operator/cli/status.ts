// `gpugate status [backend <name> | tenant <ns/name>]`: the fleet view merged across data-plane admin
// ports, as a table or JSON. Sources: --operator-url (the operator's GET /fleet, which knows every data
// plane and the revision each should serve) or --admin-url (repeatable; the CLI aggregates itself). The
// token: --admin-token or GPUGATE_PUSH_TOKEN (the push token, for both).
import {
  aggregateFleet,
  aggregateTenant,
  parseChainSpecs,
  type AdminTarget,
  type FleetStatus,
  type TenantFleet,
} from '../aggregate/aggregate.ts';
import { renderStatus, renderTenant } from '../aggregate/render.ts';
import { CliError, notFound, usageError, type Command, type Context } from './command.ts';

const options = {
  'operator-url': { type: 'string' },
  'admin-url': { type: 'string', multiple: true },
  'admin-token': { type: 'string' },
  'gateway-admin': { type: 'string', multiple: true },
} as const;

const optionHelp = [
  '  --operator-url URL    the operator’s port (GET /fleet; also GPUGATE_OPERATOR_URL)',
  '  --admin-url URL       or a data plane admin port (repeatable; also GPUGATE_ADMIN_URLS, comma-separated)',
  '  --admin-token TOKEN   the push token (also GPUGATE_PUSH_TOKEN)',
  '  --gateway-admin ENDPOINT=ADMIN_URL  with --admin-url: a chained gpugate’s admin API (repeatable)',
];

type Source =
  | { kind: 'operator'; url: string; token: string }
  | { kind: 'admin'; targets: AdminTarget[]; chains: string[] };

function source(env: NodeJS.ProcessEnv, values: Record<string, unknown>): Source {
  const token = (values['admin-token'] as string | undefined) ?? env.GPUGATE_PUSH_TOKEN;
  const raw = values['admin-url'];
  const urls = Array.isArray(raw)
    ? (raw as string[])
    : (env.GPUGATE_ADMIN_URLS ?? '').split(',').filter((u) => u !== '');
  const operatorUrl =
    (values['operator-url'] as string | undefined) ??
    (urls.length === 0 ? env.GPUGATE_OPERATOR_URL : undefined);
  if (operatorUrl && Array.isArray(raw)) throw usageError('give --operator-url or --admin-url, not both');
  if (!operatorUrl && urls.length === 0)
    throw usageError(
      '--operator-url (the operator, e.g. http://127.0.0.1:8082) or --admin-url (a data plane admin port, e.g. http://127.0.0.1:9090) is required',
    );
  if (!token) throw usageError('--admin-token (or GPUGATE_PUSH_TOKEN) is required');
  for (const u of operatorUrl ? [operatorUrl] : urls) {
    try {
      new URL(u);
    } catch {
      throw usageError(`${JSON.stringify(u)} is not a URL (e.g. http://127.0.0.1:9090)`);
    }
  }
  const chains = (values['gateway-admin'] as string[] | undefined) ?? [];
  if (operatorUrl) {
    if (chains.length > 0)
      throw usageError('--gateway-admin goes with --admin-url; the operator has its own --gateway-admin');
    return { kind: 'operator', url: operatorUrl.replace(/\/+$/, ''), token };
  }
  return {
    kind: 'admin',
    targets: urls.map((u) => ({ name: new URL(u).host, adminUrl: u.replace(/\/+$/, ''), token })),
    chains,
  };
}

async function fromOperator(url: string, token: string, path: string): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(`${url}${path}`, {
      headers: { authorization: `Bearer ${token}` },
      signal: AbortSignal.timeout(15_000),
    });
  } catch (err) {
    const e = err as Error;
    throw new CliError(
      `the operator at ${url} could not be reached: ${e.cause instanceof Error ? e.cause.message : e.message}`,
    );
  }
  const body = (await res.json().catch(() => null)) as { error?: string } | null;
  if (!res.ok)
    throw new CliError(`the operator at ${url} answered ${res.status}: ${body?.error ?? 'no error message'}`);
  return body;
}

async function fleet(ctx: Context, values: Record<string, unknown>): Promise<FleetStatus> {
  const s = source(ctx.env, values);
  if (s.kind === 'operator') return (await fromOperator(s.url, s.token, '/fleet')) as FleetStatus;
  let chains;
  try {
    chains = parseChainSpecs('--gateway-admin', s.chains, s.targets[0]!.token);
  } catch (err) {
    throw usageError((err as Error).message);
  }
  return aggregateFleet({ targets: s.targets, expectedRevision: null, chains });
}

const TENANT = /^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)\/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/;

function tenantId(ctx: Context, raw: string): string {
  const id = raw.includes('/') ? raw : `${ctx.namespace()}/${raw}`;
  if (!TENANT.test(id))
    throw usageError(
      `tenant ${JSON.stringify(raw)} is not <namespace>/<name> or <name> (lower-case letters, digits, '-' and '.')`,
    );
  return id;
}

export const statusCommands: Command[] = [
  {
    path: ['status'],
    summary: 'replicas, revisions and endpoint health across data planes',
    args: [],
    options,
    optionHelp,
    async run(ctx, _pos, values) {
      const f = await fleet(ctx, values);
      return { text: renderStatus(f, { color: ctx.color }), json: f };
    },
  },
  {
    path: ['status', 'backend'],
    summary: 'one backend’s endpoints across data planes',
    args: ['<name>'],
    options,
    optionHelp,
    async run(ctx, [name], values) {
      const f = await fleet(ctx, values);
      const backends = f.backends.filter((b) => b.id === name || b.id.endsWith(`/${name}`));
      if (backends.length === 0)
        throw notFound(
          `no data plane serves a backend ${JSON.stringify(name)}; backends: ${f.backends.map((b) => b.id).join(', ') || 'none'}`,
        );
      return {
        text: renderStatus(f, { color: ctx.color, backend: name as string }),
        json: { ...f, backends },
      };
    },
  },
  {
    path: ['status', 'tenant'],
    summary: 'a tenant’s limits, buckets, leases and quota on each data plane',
    args: ['<ns/name>'],
    options,
    optionHelp,
    async run(ctx, [name], values) {
      const id = tenantId(ctx, name as string);
      const s = source(ctx.env, values);
      const t =
        s.kind === 'operator'
          ? ((await fromOperator(s.url, s.token, `/fleet/tenants/${id}`)) as TenantFleet)
          : await aggregateTenant(s.targets, id);
      const answered = t.replicas.filter((r) => r.reachable);
      if (answered.length > 0 && answered.every((r) => !r.view))
        throw notFound(`no data plane knows tenant ${id}: ${answered[0]!.target} ${answered[0]!.error}`);
      return { text: renderTenant(t, { color: ctx.color }), json: t };
    },
  },
];
