// gpugate quota set | add. `set` changes the Tenant's spec.quota (the operator's snapshot carries it
// to every replica); `add` is a top-up in the usage database for the current period, idempotent on
// --reference (the hook a payment system calls; also POST /admin/tenants/<ns>/<name>/topup).
import { topUp } from '../../dataplane/usage/queries.ts';
import { CliError, formatCredits, parseCredits, parsePeriod, table, type Command } from './command.ts';
import { requireTenant, tenantId } from './tenant.ts';

const set: Command = {
  path: ['quota', 'set'],
  summary: "Set a tenant's credit quota per period (writes the Tenant)",
  args: ['<tenant>', '<credits>'],
  options: { period: { type: 'string' } },
  optionHelp: ['--period P  Daily, Monthly or None (default: the current period, else Monthly)'],
  async run(ctx, [rawTenant, rawCredits], values) {
    const credits = parseCredits('<credits>', rawCredits!);
    const tenant = await requireTenant(ctx, rawTenant!);
    const period =
      typeof values.period === 'string'
        ? parsePeriod(values.period)
        : (tenant.spec.quota?.period ?? 'Monthly');
    const target = await ctx.target();
    await target.setTenantQuota(tenant.metadata.namespace ?? 'default', tenant.metadata.name, {
      credits,
      period,
    });
    const before = tenant.spec.quota;
    return {
      text: `quota of tenant ${tenantId(tenant)}: ${before ? `${formatCredits(before.credits)} credits ${before.period ?? 'Monthly'}` : 'none'} -> ${formatCredits(credits)} credits ${period}`,
      json: { tenant: tenantId(tenant), before: before ?? null, quota: { credits, period } },
    };
  },
};

const add: Command = {
  path: ['quota', 'add'],
  summary: "Top up a tenant's current period with extra credits (usage database)",
  args: ['<tenant>', '<credits>'],
  options: { reference: { type: 'string' } },
  optionHelp: ['--reference REF  idempotency key, e.g. a payment id: the same REF is credited once'],
  async run(ctx, [rawTenant, rawCredits], values) {
    const credits = parseCredits('<credits>', rawCredits!, true);
    const tenant = await requireTenant(ctx, rawTenant!);
    const id = tenantId(tenant);
    const quota = tenant.spec.quota;
    if (!quota) {
      throw new CliError(
        `tenant ${id} has no quota to top up: give it one first (gpugate quota set ${id} <credits>)`,
      );
    }
    const result = await topUp(ctx.db(), {
      kind: 'tenant',
      id,
      credits,
      ...(typeof values.reference === 'string' ? { reference: values.reference } : {}),
      ifMissing: { period: quota.period ?? 'Monthly', limit: quota.credits },
    });
    if (!result.ok) throw new CliError(result.message);
    const s = result.state;
    return {
      text: [
        result.credited
          ? `added ${formatCredits(credits)} credits to tenant ${id} (reference ${result.reference})`
          : `reference ${result.reference} was already credited to tenant ${id}: nothing added`,
        table([
          [
            'period',
            `${s.periodStart?.slice(0, 10) ?? 'beginning'} .. ${s.periodEnd?.slice(0, 10) ?? 'never resets'}`,
          ],
          ['limit', formatCredits(s.limit)],
          ['topped up', formatCredits(s.toppedUp)],
          ['spent', formatCredits(s.spent)],
          ['remaining', formatCredits(s.remaining)],
        ]),
      ].join('\n'),
      json: { tenant: id, credited: result.credited, reference: result.reference, quota: s },
    };
  },
};

export const quotaCommands: Command[] = [set, add];
