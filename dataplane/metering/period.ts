// Quota periods in UTC. Daily resets at 00:00 UTC, Monthly on the 1st at 00:00 UTC, None never.
import type { QuotaPeriod } from '../config/snapshot.ts';

/** Start of the period containing `at`, as the timestamptz text stored in quota_balances. */
export function periodStart(period: QuotaPeriod, at: number): string {
  if (period === 'None') return '-infinity';
  const d = new Date(at);
  const start =
    period === 'Daily'
      ? Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate())
      : Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
  return new Date(start).toISOString();
}

/** End of the period containing `at` (exclusive), or null for None. */
export function periodEnd(period: QuotaPeriod, at: number): Date | null {
  if (period === 'None') return null;
  const d = new Date(at);
  return new Date(
    period === 'Daily'
      ? Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1)
      : Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1),
  );
}

export interface PeriodBounds {
  /** periodStart() of every instant in [from, until). */
  start: string;
  from: number;
  until: number;
}

/** The period containing `at` as a range of instants, so callers can reuse its start. */
export function periodBounds(period: QuotaPeriod, at: number): PeriodBounds {
  if (period === 'None') return { start: '-infinity', from: -Infinity, until: Infinity };
  const start = periodStart(period, at);
  return { start, from: Date.parse(start), until: (periodEnd(period, at) as Date).getTime() };
}
