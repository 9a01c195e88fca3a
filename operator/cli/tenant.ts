// gpugate tenant create | info
import { API_VERSION, type Tenant } from '../api/v1alpha1/index.ts';
import { periodUsage } from '../../dataplane/usage/queries.ts';
import {
  checkName,
  formatCredits,
  notFound,
  objectRef,
  parseCredits,
  parsePeriod,
  table,
  type Command,
  type Context,
  usageError,
} from './command.ts';

export async function requireTenant(ctx: Context, raw: string): Promise<Tenant> {
  const { namespace, name } = objectRef(ctx, 'tenant', raw);
  const target = await ctx.target();
  const tenant = await target.getTenant(namespace, name);
  if (!tenant) throw notFound(`tenant ${namespace}/${name} not found in ${target.description}`);
  return tenant;
}

export const tenantId = (t: Tenant) => `${t.metadata.namespace ?? 'default'}/${t.metadata.name}`;

const create: Command = {
  path: ['tenant', 'create'],
  summary: 'Create a Tenant, optionally with a credit quota',
  args: ['<name>'],
  options: {
    credits: { type: 'string' },
    period: { type: 'string' },
    'display-name': { type: 'string' },
  },
  optionHelp: [
    '--credits N          credit quota per period (none: no quota)',
    '--period P           Daily, Monthly (default) or None (a one-off allowance)',
    '--display-name TEXT  human-readable name for dashboards',
  ],
  async run(ctx, [rawName], values) {
    const name = checkName('tenant name', rawName!);
    const namespace = ctx.namespace();
    if (values.period !== undefined && values.credits === undefined) {
      throw usageError('--period needs --credits: a period without a quota means nothing');
    }
    const spec: Tenant['spec'] = {} as Tenant['spec'];
    if (typeof values['display-name'] === 'string') spec.displayName = values['display-name'];
    if (typeof values.credits === 'string') {
      spec.quota = {
        credits: parseCredits('--credits', values.credits),
        period: typeof values.period === 'string' ? parsePeriod(values.period) : 'Monthly',
      };
    }
    const tenant = { apiVersion: API_VERSION, kind: 'Tenant', metadata: { name, namespace }, spec } as Tenant;
    const target = await ctx.target();
    await target.createTenant(tenant);
    const quota = spec.quota
      ? `${formatCredits(spec.quota.credits)} credits ${spec.quota.period === 'None' ? 'once' : spec.quota.period.toLowerCase()}`
      : 'no quota';
    return {
      text: `created Tenant ${namespace}/${name} (${quota}) in ${target.description}`,
      json: { tenant: `${namespace}/${name}`, quota: spec.quota ?? null, target: target.description },
    };
  },
};

const info: Command = {
  path: ['tenant', 'info'],
  summary: 'Show a Tenant: quota, limits, keys, and usage this period (with DATABASE_URL)',
  args: ['<name>'],
  async run(ctx, [raw]) {
    const tenant = await requireTenant(ctx, raw!);
    const id = tenantId(tenant);
    const target = await ctx.target();
    const keys = (await target.listApiKeys(tenant.metadata.namespace ?? 'default')).filter(
      (k) => k.spec.tenant === tenant.metadata.name,
    );
    const usage = ctx.hasDb() ? await periodUsage(ctx.db(), id) : null;
    const spec = tenant.spec;
    const rows: [string, string][] = [
      ['tenant', id],
      ['display name', spec.displayName ?? '-'],
      ['suspended', spec.suspended ? 'yes' : 'no'],
      [
        'quota',
        spec.quota
          ? `${formatCredits(spec.quota.credits)} credits, period ${spec.quota.period ?? 'Monthly'}`
          : 'none',
      ],
      [
        'limits',
        spec.limits
          ? Object.entries(spec.limits)
              .map(([k, v]) => `${k}=${String(v)}`)
              .join(' ') || '-'
          : '-',
      ],
      ['allowed models', spec.allowedModels?.join(', ') || 'all'],
      ['keys', keys.length === 0 ? 'none' : keys.map((k) => k.metadata.name).join(', ')],
    ];
    if (usage) {
      rows.push(
        [
          'period',
          `${usage.periodStart?.slice(0, 10) ?? 'beginning'} .. ${usage.periodEnd?.slice(0, 10) ?? 'never resets'}`,
        ],
        ['requests', String(usage.requests)],
        ['tokens in/out', `${usage.inputTokens} / ${usage.outputTokens}`],
        ['credits used', formatCredits(usage.creditsUsed)],
        ['credits left', formatCredits(usage.creditsRemaining)],
      );
    } else {
      ctx.note('usage not shown: set DATABASE_URL (or --database-url) to read it');
    }
    return {
      text: table(rows),
      json: {
        tenant: id,
        spec,
        keys: keys.map((k) => `${k.metadata.namespace ?? 'default'}/${k.metadata.name}`),
        usage,
      },
    };
  },
};

export const tenantCommands: Command[] = [create, info];
