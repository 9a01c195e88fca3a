// gpugate usage show | reset, from the usage database (the same queries as GET /v1/usage).
import {
  dayProblem,
  periodDays,
  quotaState,
  resetPeriodSpend,
  usageReport,
} from '../../dataplane/usage/queries.ts';
import { CliError, formatCredits, table, usageError, type Command } from './command.ts';
import { requireTenant, tenantId } from './tenant.ts';

const show: Command = {
  path: ['usage', 'show'],
  summary: "Show a tenant's usage: totals, by model and by day (default: the current quota period)",
  args: ['<tenant>'],
  options: { from: { type: 'string' }, to: { type: 'string' }, key: { type: 'string' } },
  optionHelp: [
    '--from YYYY-MM-DD  first UTC day (default: start of the quota period, or of the month)',
    '--to YYYY-MM-DD    last UTC day (default: today)',
    '--key NAME         only this ApiKey of the tenant',
  ],
  async run(ctx, [raw], values) {
    for (const name of ['from', 'to'] as const) {
      const v = values[name];
      if (typeof v === 'string') {
        const problem = dayProblem(`--${name}`, v);
        if (problem) throw usageError(problem);
      }
    }
    const tenant = await requireTenant(ctx, raw!);
    const id = tenantId(tenant);
    const namespace = tenant.metadata.namespace ?? 'default';
    const days = periodDays(tenant.spec.quota?.period ?? null, Date.now());
    const from = typeof values.from === 'string' ? values.from : days.from;
    const to = typeof values.to === 'string' ? values.to : days.to;
    if (from !== null && from > to) throw usageError(`--from (${from}) is after --to (${to})`);
    const keyId = typeof values.key === 'string' ? `${namespace}/${values.key}` : null;
    const db = ctx.db();
    const report = await usageReport(db, { tenant: id, keyId, from, to });
    const quota = await quotaState(db, 'tenant', id);
    const t = report.totals;
    const lines = [
      `usage of tenant ${id}${keyId ? `, key ${keyId}` : ''}, ${from ?? 'beginning'} .. ${to} (UTC days)`,
      table([
        ['requests', `${t.requests} (${t.errors} errors)`],
        ['tokens in/out', `${t.inputTokens} / ${t.outputTokens}`],
        ['credits', formatCredits(t.credits)],
        ...(quota
          ? ([
              [
                'quota',
                `${formatCredits(quota.limit)} + ${formatCredits(quota.toppedUp)} topped up, ${quota.period}`,
              ],
              ['quota left', formatCredits(quota.remaining)],
            ] as [string, string][])
          : []),
      ]),
    ];
    if (report.byModel.length > 0) {
      lines.push('', 'by model:');
      for (const m of report.byModel)
        lines.push(`  ${m.model || '(none)'}  ${m.requests} requests  ${formatCredits(m.credits)} credits`);
    }
    if (report.byDay.length > 0) {
      lines.push('', 'by day:');
      for (const d of report.byDay)
        lines.push(`  ${d.day}  ${d.requests} requests  ${formatCredits(d.credits)} credits`);
    }
    return { text: lines.join('\n'), json: { ...report, quota } };
  },
};

const reset: Command = {
  path: ['usage', 'reset'],
  summary: "Start a tenant's quota period afresh (spend forgotten; events and reports are kept)",
  args: ['<tenant>'],
  async run(ctx, [raw]) {
    const tenant = await requireTenant(ctx, raw!);
    const id = tenantId(tenant);
    if (!(await resetPeriodSpend(ctx.db(), 'tenant', id))) {
      throw new CliError(
        `tenant ${id} has no quota balance to reset: it has no quota, or no gateway has applied it yet`,
      );
    }
    const state = await quotaState(ctx.db(), 'tenant', id);
    return {
      text: `reset the period spend of tenant ${id}: ${formatCredits(state?.remaining)} credits left`,
      json: { tenant: id, quota: state },
    };
  },
};

export const usageCommands: Command[] = [show, reset];
