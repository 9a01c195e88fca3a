// Reads a tenant's usage in its current quota period from the metering tables (docs/metering.md):
// usage_daily holds per-day totals (requests, tokens, credits) that the data planes' writers upsert.
import pg from 'pg';
import { periodEnd, periodStart } from '../../dataplane/metering/period.ts';
import type { TenantStatus } from '../api/v1alpha1/index.ts';

type Usage = NonNullable<TenantStatus['usage']>;

export interface UsageReader {
  read(
    tenantId: string,
    quota: { credits: number; period?: 'None' | 'Daily' | 'Monthly' } | null,
    now: Date,
  ): Promise<Usage>;
  close(): Promise<void>;
}

export function createUsageReader(databaseUrl: string): UsageReader {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 2, idleTimeoutMillis: 30_000 });
  pool.on('error', () => {}); // an idle connection dropped by the server; the next query reconnects
  return {
    async read(tenantId, quota, now) {
      const period = quota ? (quota.period ?? 'Monthly') : 'Monthly';
      const start = periodStart(period, now.getTime());
      const end = periodEnd(period, now.getTime());
      const day = start === '-infinity' ? '-infinity' : start.slice(0, 10);
      const { rows } = await pool.query<{ requests: string; input: string; output: string; credits: string }>(
        `SELECT coalesce(sum(requests), 0) AS requests, coalesce(sum(input_tokens), 0) AS input,
                coalesce(sum(output_tokens), 0) AS output, coalesce(sum(credits), 0) AS credits
           FROM usage_daily WHERE tenant = $1 AND day >= $2::date`,
        [tenantId, day],
      );
      const r = rows[0]!;
      const creditsUsed = Number(r.credits);
      return {
        period,
        ...(start === '-infinity' ? {} : { periodStart: start.replace(/\.\d+Z$/, 'Z') }),
        ...(end ? { periodEnd: end.toISOString().replace(/\.\d+Z$/, 'Z') } : {}),
        requests: Number(r.requests),
        inputTokens: Number(r.input),
        outputTokens: Number(r.output),
        creditsUsed,
        ...(quota ? { creditsRemaining: Math.max(0, quota.credits - creditsUsed) } : {}),
        updatedAt: now.toISOString().replace(/\.\d+Z$/, 'Z'),
      };
    },
    close: () => pool.end(),
  };
}
