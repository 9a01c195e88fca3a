// The read side of metering, and the two writes an account manager makes (top-up, reset). One set
// of queries for GET /v1/usage, the admin usage view, `gpugate usage` and the Tenant status, so
// they can never disagree. Reports read the daily roll-ups (usage_daily), never raw events: a
// month of a busy tenant is a few hundred rows. Days are UTC, as are quota periods.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { QuotaPeriod } from '../config/snapshot.ts';
import { utcDay } from '../metering/migrate.ts';
import { periodEnd, periodStart } from '../metering/period.ts';

/** A pool or a client: the queries are single statements. */
export type Db = Pick<pg.Pool, 'query'>;

export type SubjectKind = 'tenant' | 'key';

export interface UsageTotals {
  requests: number;
  inputTokens: number;
  outputTokens: number;
  credits: number;
  /** Responses with status >= 500, or none at all. */
  errors: number;
}

export interface UsageReport {
  tenant: string;
  /** Set when the report is for one key of the tenant. */
  keyId: string | null;
  /** First UTC day included (YYYY-MM-DD), null for "since the beginning". */
  from: string | null;
  /** Last UTC day included (YYYY-MM-DD). */
  to: string;
  totals: UsageTotals;
  byModel: (UsageTotals & { model: string })[];
  byDay: (UsageTotals & { day: string })[];
}

export interface QuotaState {
  kind: SubjectKind;
  id: string;
  period: QuotaPeriod;
  /** Null for period None. */
  periodStart: string | null;
  periodEnd: string | null;
  limit: number;
  /** Credits settled this period, before top-ups. */
  spent: number;
  /** Credits added by top-ups this period. */
  toppedUp: number;
  /** Held by replicas' leases, not yet spent. */
  reserved: number;
  /** limit + toppedUp - spent - reserved; what new leases can still take. */
  available: number;
  /** limit + toppedUp - spent: what is left once the leases settle. */
  remaining: number;
}

const DAY = /^\d{4}-\d{2}-\d{2}$/;

/** Checks a YYYY-MM-DD day; returns a message naming the parameter when it is not one. */
export function dayProblem(name: string, value: string): string | null {
  if (!DAY.test(value) || Number.isNaN(Date.parse(`${value}T00:00:00Z`))) {
    return `${name} must be a UTC day as YYYY-MM-DD, got ${JSON.stringify(value)}`;
  }
  return null;
}

/** The days a report covers by default: the current quota period (this month without a quota). */
export function periodDays(period: QuotaPeriod | null, now: number): { from: string | null; to: string } {
  const start = periodStart(period ?? 'Monthly', now);
  return { from: start === '-infinity' ? null : start.slice(0, 10), to: utcDay(now) };
}

const SUMS = `sum(requests)::float8 AS requests, sum(input_tokens)::float8 AS input_tokens,
  sum(output_tokens)::float8 AS output_tokens, sum(credits)::float8 AS credits, sum(errors)::float8 AS errors`;

interface SumRow {
  requests: number | null;
  input_tokens: number | null;
  output_tokens: number | null;
  credits: number | null;
  errors: number | null;
}

function totalsOf(row: SumRow | undefined): UsageTotals {
  return {
    requests: row?.requests ?? 0,
    inputTokens: row?.input_tokens ?? 0,
    outputTokens: row?.output_tokens ?? 0,
    credits: row?.credits ?? 0,
    errors: row?.errors ?? 0,
  };
}

/** Totals, by model and by day for a tenant (or one of its keys) over UTC days [from, to]. */
export async function usageReport(
  db: Db,
  q: { tenant: string; keyId?: string | null; from: string | null; to: string },
): Promise<UsageReport> {
  // One scan of the matching roll-up rows, grouped three ways.
  const { rows } = await db.query<SumRow & { model: string | null; day: string | null }>(
    `SELECT CASE WHEN grouping(model) = 0 THEN model END AS model,
            CASE WHEN grouping(day) = 0 THEN to_char(day, 'YYYY-MM-DD') END AS day, ${SUMS}
     FROM usage_daily
     WHERE tenant = $1 AND ($2::text IS NULL OR key_id = $2)
       AND ($3::date IS NULL OR day >= $3::date) AND day <= $4::date
     GROUP BY GROUPING SETS ((), (model), (day))`,
    [q.tenant, q.keyId ?? null, q.from, q.to],
  );
  const total = rows.find((r) => r.model === null && r.day === null);
  const byModel = rows
    .filter((r) => r.model !== null && r.day === null)
    .map((r) => ({ model: r.model as string, ...totalsOf(r) }))
    .sort((a, b) => b.credits - a.credits || a.model.localeCompare(b.model));
  const byDay = rows
    .filter((r) => r.day !== null)
    .map((r) => ({ day: r.day as string, ...totalsOf(r) }))
    .sort((a, b) => a.day.localeCompare(b.day));
  return {
    tenant: q.tenant,
    keyId: q.keyId ?? null,
    from: q.from,
    to: q.to,
    totals: totalsOf(total),
    byModel,
    byDay,
  };
}

interface BalanceRow {
  period: QuotaPeriod;
  period_start: string;
  credits_limit: number;
  used: number;
  reserved: number;
  topped_up: number;
}

const BALANCE = `
SELECT b.period, CASE WHEN b.period_start = '-infinity' THEN '-infinity' ELSE to_char(b.period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') END AS period_start,
       b.credits_limit::float8 AS credits_limit, b.used::float8 AS used, b.reserved::float8 AS reserved,
       coalesce((SELECT sum(t.credits) FROM quota_topups t
                 WHERE t.subject_kind = b.subject_kind AND t.subject_id = b.subject_id
                   AND t.period_start = b.period_start), 0)::float8 AS topped_up
FROM quota_balances b WHERE b.subject_kind = $1 AND b.subject_id = $2`;

function stateOf(kind: SubjectKind, id: string, row: BalanceRow, now: number): QuotaState {
  // A balance whose period ended and that no replica has rolled yet is, for a reader, a fresh one.
  const current = periodStart(row.period, now);
  const stale = row.period !== 'None' && Date.parse(row.period_start) < Date.parse(current);
  const spent = stale ? 0 : row.used + row.topped_up;
  const toppedUp = stale ? 0 : row.topped_up;
  const reserved = stale ? 0 : row.reserved;
  const end = periodEnd(row.period, now);
  return {
    kind,
    id,
    period: row.period,
    periodStart: row.period === 'None' ? null : current,
    periodEnd: end ? end.toISOString() : null,
    limit: row.credits_limit,
    spent,
    toppedUp,
    reserved,
    available: row.credits_limit + toppedUp - spent - reserved,
    remaining: row.credits_limit + toppedUp - spent,
  };
}

/** The quota balance of a tenant or key, or null when no replica has applied a quota for it. */
export async function quotaState(
  db: Db,
  kind: SubjectKind,
  id: string,
  now = Date.now(),
): Promise<QuotaState | null> {
  const { rows } = await db.query<BalanceRow>(BALANCE, [kind, id]);
  return rows[0] ? stateOf(kind, id, rows[0], now) : null;
}

/** A tenant's usage in its current quota period: the shape of Tenant status.usage. */
export async function periodUsage(
  db: Db,
  tenant: string,
  now = Date.now(),
): Promise<{
  period: QuotaPeriod | null;
  periodStart: string | null;
  periodEnd: string | null;
  requests: number;
  inputTokens: number;
  outputTokens: number;
  creditsUsed: number;
  creditsRemaining: number | null;
  updatedAt: string;
}> {
  const quota = await quotaState(db, 'tenant', tenant, now);
  const days = periodDays(quota?.period ?? null, now);
  const report = await usageReport(db, { tenant, ...days });
  return {
    period: quota?.period ?? null,
    periodStart: quota ? quota.periodStart : `${days.from}T00:00:00.000Z`,
    periodEnd: quota ? quota.periodEnd : (periodEnd('Monthly', now)?.toISOString() ?? null),
    requests: report.totals.requests,
    inputTokens: report.totals.inputTokens,
    outputTokens: report.totals.outputTokens,
    creditsUsed: report.totals.credits,
    creditsRemaining: quota ? quota.remaining : null,
    updatedAt: new Date(now).toISOString(),
  };
}

export type TopUpResult =
  | { ok: true; credited: boolean; reference: string; state: QuotaState }
  | { ok: false; code: 'no_quota'; message: string };

/**
 * Adds credits to a subject's current period, once per reference. `ifMissing` creates the balance
 * row when no replica has applied the subject's quota yet (the CLI knows it from the manifests).
 */
export async function topUp(
  db: Db,
  t: {
    kind: SubjectKind;
    id: string;
    credits: number;
    reference?: string;
    ifMissing?: { period: QuotaPeriod; limit: number };
    now?: number;
  },
): Promise<TopUpResult> {
  if (!(Number.isFinite(t.credits) && t.credits > 0)) {
    throw new RangeError(`credits must be a number greater than 0, got ${t.credits}`);
  }
  const now = t.now ?? Date.now();
  const reference = t.reference ?? randomUUID();
  if (t.ifMissing) {
    await db.query(
      `INSERT INTO quota_balances (subject_kind, subject_id, period, period_start, credits_limit)
       VALUES ($1, $2, $3, $4::timestamptz, $5) ON CONFLICT DO NOTHING`,
      [t.kind, t.id, t.ifMissing.period, periodStart(t.ifMissing.period, now), t.ifMissing.limit],
    );
  }
  // Roll a stale period first (as a replica would), so the credits land in the current one.
  const found = await db.query<{ period: QuotaPeriod }>(
    'SELECT period FROM quota_balances WHERE subject_kind = $1 AND subject_id = $2',
    [t.kind, t.id],
  );
  const period = found.rows[0]?.period;
  if (period !== undefined && period !== 'None') {
    await db.query(
      `UPDATE quota_balances SET period_start = $3::timestamptz, used = 0, reserved = 0, updated_at = now()
       WHERE subject_kind = $1 AND subject_id = $2 AND period_start < $3::timestamptz`,
      [t.kind, t.id, periodStart(period, now)],
    );
  }
  const { rows } = await db.query<{ credited: boolean }>(
    `WITH b AS (SELECT subject_kind, subject_id, period_start FROM quota_balances
                WHERE subject_kind = $1 AND subject_id = $2),
          ins AS (INSERT INTO quota_topups (subject_kind, subject_id, reference, credits, period_start)
                  SELECT subject_kind, subject_id, $3, $4, period_start FROM b
                  ON CONFLICT DO NOTHING RETURNING subject_kind, subject_id, credits),
          upd AS (UPDATE quota_balances q SET used = q.used - ins.credits, updated_at = now()
                  FROM ins WHERE q.subject_kind = ins.subject_kind AND q.subject_id = ins.subject_id
                  RETURNING 1)
     SELECT EXISTS (SELECT 1 FROM upd) AS credited FROM b`,
    [t.kind, t.id, reference, t.credits],
  );
  if (rows.length === 0) {
    return {
      ok: false,
      code: 'no_quota',
      message: `${t.kind} ${t.id} has no quota balance: give it a quota (quota set) and let a gateway apply it`,
    };
  }
  const state = (await quotaState(db, t.kind, t.id, now)) as QuotaState;
  return { ok: true, credited: rows[0]!.credited, reference, state };
}

/**
 * Starts the subject's current period afresh: what was spent is forgotten (top-ups of the period
 * stay). Usage events and roll-ups are never deleted. False when the subject has no balance.
 */
export async function resetPeriodSpend(db: Db, kind: SubjectKind, id: string): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE quota_balances b SET updated_at = now(),
       used = -coalesce((SELECT sum(t.credits) FROM quota_topups t
                         WHERE t.subject_kind = b.subject_kind AND t.subject_id = b.subject_id
                           AND t.period_start = b.period_start), 0)
     WHERE b.subject_kind = $1 AND b.subject_id = $2`,
    [kind, id],
  );
  return (rowCount ?? 0) > 0;
}
