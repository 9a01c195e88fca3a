// Quotas across replicas with leases. A replica takes a slice of a subject's (tenant's or key's)
// remaining credits with one atomic UPDATE, admits requests against that slice in memory, settles
// what they actually cost on its sync tick (one statement for all its leases), and returns what is
// left when idle or closing. The database only grants out of credits_limit - used - reserved, so
// leases never add up to more than the quota; a lease that is not renewed expires and any replica's
// sweep gives its remainder back, so a dead replica's slice returns after leaseTtlMs.
//
// Request path:
//   const d = await quota.admit(tenantId, keyId, estimatedCredits);
//   if (!d.ok) -> 429 quota_exceeded (d.periodEnd) or 503 quota_unavailable
//   ... forward ...
//   quota.settle(d.ticket, actualCredits);   // exactly once per admitted request, 0 if it failed
//
// Exactness: a request is admitted only when its estimate fits in the local slice, so while actual
// cost <= estimate, settled usage never exceeds the quota. A request that costs more than its
// estimate goes into debt on its slice, paid from the next slice; if there is no next slice, the
// debt is the overspend. Slices shrink with the remaining balance (at most maxShareOfAvailable of
// it), so the last slices are about one request each. Details and bounds: docs/metering.md.
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { pino, type Logger } from 'pino';
import type pg from 'pg';
import type { Quota, Snapshot } from '../config/snapshot.ts';
import { periodBounds, periodEnd, periodStart, type PeriodBounds } from './period.ts';
import { guardIdleErrors } from './writer.ts';

export interface QuotaOptions {
  pool: pg.Pool;
  /** Names this replica in quota_leases.holder. Default host-pid-random. */
  holder?: string;
  /** A lease not renewed for this long is reclaimed. Default 30 s. */
  leaseTtlMs?: number;
  /** Settle, renew and sweep this often. Default 200 ms. */
  syncIntervalMs?: number;
  /** Target slice: this many seconds of this replica's recent spend rate. Default 2. */
  sliceSeconds?: number;
  /** Smallest slice, in requests of the size being admitted. Default 4. */
  minSliceRequests?: number;
  /** No slice takes more than this share of the subject's available credits. Default 0.25. */
  maxShareOfAvailable?: number;
  /** After a refused lease, answer quota_exceeded locally for this long. Default 1 s. */
  exhaustedCacheMs?: number;
  /** Return a lease nobody used for this long. Default 10 s. */
  idleReleaseMs?: number;
  /** Wall clock for period boundaries (UTC). Lease expiry uses the database clock. */
  now?: () => number;
  registry?: Registry;
  logger?: Logger;
}

export type SubjectKind = 'tenant' | 'key';

/** Proof of admission; settle it exactly once. */
export interface QuotaTicket {
  readonly estimate: number;
  /** True when admitted without a lease (database unreachable, tenant fail-open). */
  readonly unmetered: boolean;
}

export type QuotaDecision =
  | { ok: true; ticket: QuotaTicket }
  | { ok: false; code: 'quota_exceeded'; subject: SubjectKind; periodEnd: Date | null }
  | { ok: false; code: 'quota_unavailable'; subject: SubjectKind };

export interface QuotaManager {
  /** Upsert the snapshot's quotas into quota_balances and track them. Call on every snapshot. */
  applySnapshot(snapshot: Pick<Snapshot, 'tenants' | 'keys'>): Promise<void>;
  admit(tenantId: string, keyId: string | null, estimatedCredits: number): Promise<QuotaDecision>;
  /**
   * admit() without I/O: the decision when this replica's slices (or a recent refusal) settle it,
   * null when a lease request is needed (then call admit). Spares the request path a promise.
   */
  tryAdmit(tenantId: string, keyId: string | null, estimatedCredits: number): QuotaDecision | null;
  /** Record what an admitted request cost (0 when it produced nothing). Never blocks. */
  settle(ticket: QuotaTicket, actualCredits: number): void;
  /**
   * One sync tick that starts after this call (a tick already running is waited for first): settle,
   * renew, release idle leases, sweep expired ones.
   */
  sync(): Promise<void>;
  /** Settle everything and return all leases. */
  close(): Promise<void>;
  /** Credits this replica holds in leases and has not settled as spent, per subject. */
  outstanding(): Map<string, number>;
}

interface Lease {
  id: string;
  kind: SubjectKind;
  subjectId: string;
  periodStart: string;
  /** What quota_leases.remaining holds for this lease, as far as we know. */
  dbRemaining: number;
  /** Free to admit against; negative is debt from requests that cost more than estimated. */
  held: number;
  /** Actual credits spent, not yet settled. */
  unsettled: number;
  /** Admitted requests not yet settled. */
  inflight: number;
  /** Last settle step the database acknowledged (quota_leases.settled_seq). */
  settledSeq: number;
  /**
   * The settle step sent and not yet acknowledged: sent again, unchanged, until it is, so a step
   * whose commit answer was lost is recognised (same seq) and not charged twice.
   */
  pending: { seq: number; spent: number; released: number } | null;
  /** Date.now() after which the lease must not be used (renewals push it forward). */
  validUntil: number;
  lastUsed: number;
}

interface Subject {
  kind: SubjectKind;
  id: string;
  quota: Quota;
  failOpen: boolean;
  lease: Lease | null;
  acquiring: Promise<void> | null;
  exhaustedUntil: number;
  exhaustedPeriodStart: string;
  /** The current period's start and the wall-clock range it holds for (periodStart is not free). */
  bounds: PeriodBounds | null;
  /** Period start this replica last rolled the balance to. */
  rolledTo: string;
  /** Credits admitted since the last acquire, and when that was: the spend rate for slice sizing. */
  demand: number;
  demandSince: number;
  rate: number;
}

interface Ticket extends QuotaTicket {
  leases: Lease[];
}

/**
 * Credits are kept to nano-credit precision in memory (Postgres keeps numeric), so that sums of
 * fractions cannot drift into a phantom debt that makes the last credit of a quota unreachable.
 */
const CREDIT_PRECISION = 1e-9;
function credits(x: number): number {
  return Math.round(x * 1e9) / 1e9;
}

const ACQUIRE = `
WITH g AS (
  UPDATE quota_balances
  SET last_grant = trunc(LEAST($3::numeric, GREATEST($4::numeric, (credits_limit - used - reserved) * $5::numeric)), 9),
      reserved = reserved + trunc(LEAST($3::numeric, GREATEST($4::numeric, (credits_limit - used - reserved) * $5::numeric)), 9),
      updated_at = now()
  WHERE subject_kind = $1 AND subject_id = $2 AND period_start = $6::timestamptz
    AND credits_limit - used - reserved >= $4::numeric
    AND credits_limit - used - reserved > 0
  RETURNING subject_kind, subject_id, period_start, last_grant, credits_limit - used - reserved AS available
),
l AS (
  INSERT INTO quota_leases AS l
    (lease_id, subject_kind, subject_id, period_start, holder, granted, remaining, expires_at)
  SELECT $7::uuid, subject_kind, subject_id, period_start, $8, last_grant, last_grant,
         now() + make_interval(secs => $9::float8 / 1000)
  FROM g
  ON CONFLICT (lease_id) DO UPDATE SET
    granted = l.granted + excluded.granted,
    remaining = l.remaining + excluded.remaining,
    expires_at = excluded.expires_at
  RETURNING lease_id
)
SELECT g.last_grant::float8 AS granted, g.available::float8 AS available FROM g, l`;

// released = the part of `spent` that was still reserved by the lease. When the lease is gone
// (reclaimed after expiry), the sweep already un-reserved it: only `used` grows.
// Idempotent: a step with spend carries seq (0: renewal only). The lease UPDATE charges it only when
// it is newer than the lease's settled_seq (SET expressions see the row's old values; a retry racing
// its own original waits for the row lock, then sees the new settled_seq), so a step sent again after
// its answer was lost renews the lease and charges nothing. A step for a lease already deleted
// charges unless the lease's tombstone in quota_settlements shows it done, and leaves a tombstone.
const SETTLE = `
WITH s AS (
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::numeric[], $6::numeric[], $8::bigint[])
    AS s(lease_id, subject_kind, subject_id, period_start, spent, released, seq)
),
l AS (
  UPDATE quota_leases q
  SET last_settle_charged = q.settled_seq < s.seq,
      remaining = q.remaining - CASE WHEN q.settled_seq < s.seq THEN s.released ELSE 0 END,
      settled_seq = GREATEST(q.settled_seq, s.seq),
      expires_at = now() + make_interval(secs => $7::float8 / 1000)
  FROM s WHERE q.lease_id = s.lease_id
  RETURNING q.lease_id, q.last_settle_charged AS charged
),
c AS (
  SELECT s.*, l.lease_id IS NOT NULL AS live,
         CASE WHEN l.lease_id IS NOT NULL THEN l.charged
              ELSE s.seq > 0 AND NOT EXISTS (
                SELECT 1 FROM quota_settlements t WHERE t.lease_id = s.lease_id AND t.seq >= s.seq)
         END AS charge
  FROM s LEFT JOIN l ON l.lease_id = s.lease_id
),
per_subject AS (
  SELECT subject_kind, subject_id, period_start, sum(spent) AS spent,
         sum(CASE WHEN live THEN released ELSE 0 END) AS released
  FROM c
  WHERE charge
  GROUP BY 1, 2, 3
),
b AS (
  UPDATE quota_balances b
  SET used = b.used + p.spent, reserved = b.reserved - p.released, updated_at = now()
  FROM per_subject p
  WHERE b.subject_kind = p.subject_kind AND b.subject_id = p.subject_id
    AND b.period_start = p.period_start
  RETURNING 1
),
t AS (
  INSERT INTO quota_settlements (lease_id, seq)
  SELECT lease_id, seq FROM c WHERE charge AND NOT live
  ON CONFLICT DO NOTHING
  RETURNING 1
)
SELECT lease_id::text AS lease_id, live, seq > 0 AND NOT charge AS duplicate FROM c`;

/**
 * Delete leases (returned by their holder, or expired), un-reserve their remainder and leave each a
 * tombstone with its last settled step; counts them.
 */
function releaseSql(where: string): string {
  return `
WITH d AS (
  DELETE FROM quota_leases WHERE ${where}
  RETURNING lease_id, subject_kind, subject_id, period_start, remaining, settled_seq
),
-- The lease's tombstone: its last settled step, for a settle retry that arrives after the deletion.
t AS (
  INSERT INTO quota_settlements (lease_id, seq)
  SELECT lease_id, settled_seq FROM d WHERE settled_seq > 0
  ON CONFLICT DO NOTHING
  RETURNING 1
),
p AS (
  SELECT subject_kind, subject_id, period_start, sum(remaining) AS remaining FROM d GROUP BY 1, 2, 3
),
u AS (
  UPDATE quota_balances b SET reserved = b.reserved - p.remaining, updated_at = now()
  FROM p
  WHERE b.subject_kind = p.subject_kind AND b.subject_id = p.subject_id AND b.period_start = p.period_start
  RETURNING 1
)
SELECT count(*)::int AS n FROM d`;
}
const RELEASE = releaseSql('lease_id = ANY($1::uuid[])');
const RECLAIM_EXPIRED = releaseSql('expires_at < now()');

/** Delete expired leases (a dead replica's) and un-reserve their remainder; returns how many. */
export async function reclaimExpiredLeases(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(RECLAIM_EXPIRED);
  return rows[0]?.n ?? 0;
}

const ROLL_PERIOD = `
UPDATE quota_balances
SET period_start = $3::timestamptz, used = 0, reserved = 0, updated_at = now()
WHERE subject_kind = $1 AND subject_id = $2 AND period <> 'None' AND period_start < $3::timestamptz`;

// A changed period starts afresh; an unchanged one keeps its usage whatever the new limit.
const UPSERT_BALANCES = `
INSERT INTO quota_balances AS q (subject_kind, subject_id, period, period_start, credits_limit)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::numeric[])
ON CONFLICT (subject_kind, subject_id) DO UPDATE SET
  credits_limit = excluded.credits_limit,
  period = excluded.period,
  period_start = CASE WHEN q.period = excluded.period THEN q.period_start ELSE excluded.period_start END,
  used = CASE WHEN q.period = excluded.period THEN q.used ELSE 0 END,
  reserved = CASE WHEN q.period = excluded.period THEN q.reserved ELSE 0 END,
  updated_at = now()
WHERE q.credits_limit <> excluded.credits_limit OR q.period <> excluded.period`;

export function createQuotaManager(options: QuotaOptions): QuotaManager {
  const pool = options.pool;
  const holder = options.holder ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  const ttlMs = options.leaseTtlMs ?? 30_000;
  const safetyMs = Math.min(ttlMs / 4, 5000);
  const syncIntervalMs = options.syncIntervalMs ?? 200;
  const sliceSeconds = options.sliceSeconds ?? 2;
  const minSliceRequests = options.minSliceRequests ?? 4;
  const maxShare = options.maxShareOfAvailable ?? 0.25;
  const exhaustedCacheMs = options.exhaustedCacheMs ?? 1000;
  const idleReleaseMs = options.idleReleaseMs ?? 10_000;
  const wallClock = options.now ?? Date.now;
  const logger = options.logger ?? pino({ enabled: false });
  const registry = options.registry ?? new Registry();
  guardIdleErrors(pool, logger);

  const subjects = new Map<string, Subject>();
  /** The same subjects by bare id: the request path looks up with the snapshot's own id strings. */
  const tenantSubjects = new Map<string, Subject>();
  const keySubjects = new Map<string, Subject>();
  /** Leases no longer used for admission that still have spend to settle or a remainder to return. */
  let retiring: Lease[] = [];
  let pendingBalances: unknown[][] | null = null;
  let lastReclaim = 0;
  let closed = false;

  const leaseRequests = new Counter({
    name: 'gpugate_quota_lease_requests_total',
    help: 'Lease requests to Postgres by result (granted, exhausted, error)',
    labelNames: ['result'] as const,
    registers: [registry],
  });
  const refusals = new Counter({
    name: 'gpugate_quota_refusals_total',
    help: 'Requests refused by quota, by code',
    labelNames: ['code'] as const,
    registers: [registry],
  });
  new Gauge({
    name: 'gpugate_quota_leased_credits',
    help: 'Credits this replica holds in leases, not yet spent',
    registers: [registry],
    collect() {
      let sum = 0;
      for (const s of subjects.values()) if (s.lease) sum += Math.max(0, s.lease.held);
      this.set(sum);
    },
  });
  const duplicateSettlements = new Counter({
    name: 'gpugate_quota_duplicate_settlements_total',
    help: 'Settle steps sent again after a lost answer and found already charged (not charged twice)',
    registers: [registry],
  });
  const syncDuration = new Histogram({
    name: 'gpugate_quota_sync_duration_seconds',
    help: 'One settle/renew/sweep tick against Postgres',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [registry],
  });

  // Statements of this replica run one at a time: a settle and an acquire on the same lease would
  // otherwise lock the lease and the balance in opposite orders.
  let chain: Promise<unknown> = Promise.resolve();
  function serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = chain.then(fn, fn);
    chain = run.catch(() => undefined);
    return run;
  }

  const subjectKey = (kind: SubjectKind, id: string): string => `${kind}:${id}`;

  function retire(subject: Subject): void {
    if (subject.lease) retiring.push(subject.lease);
    subject.lease = null;
  }

  function usable(lease: Lease | null, start: string, now: number): lease is Lease {
    return lease !== null && lease.periodStart === start && now < lease.validUntil;
  }

  async function acquire(subject: Subject, need: number, estimate: number): Promise<void> {
    const start = startOf(subject, wallClock());
    const now = Date.now();
    if (subject.lease && !usable(subject.lease, start, now)) retire(subject);
    const elapsed = Math.max((now - subject.demandSince) / 1000, 0.05);
    subject.rate = subject.rate * 0.5 + (subject.demand / elapsed) * 0.5;
    subject.demand = 0;
    subject.demandSince = now;
    const debt = subject.lease ? Math.max(0, -subject.lease.held) : 0;
    const min = need + debt;
    const want = Math.max(min, estimate * minSliceRequests + debt, subject.rate * sliceSeconds + debt);
    // Top up our current lease, or start a new one. If sync retires `target` meanwhile, the grant
    // still lands on it (same row), so its release returns the grant too.
    const target = subject.lease;
    const leaseId = target?.id ?? randomUUID();
    const sentAt = Date.now();
    await serial(async () => {
      if (subject.rolledTo !== start) {
        await pool.query(ROLL_PERIOD, [subject.kind, subject.id, start]);
        subject.rolledTo = start;
      }
      const { rows } = await pool.query<{ granted: number; available: number }>(ACQUIRE, [
        subject.kind,
        subject.id,
        credits(want),
        credits(min),
        maxShare,
        start,
        leaseId,
        holder,
        ttlMs,
      ]);
      const row = rows[0];
      if (!row) {
        leaseRequests.labels('exhausted').inc();
        // Give back the crumbs this replica still holds, so that the last credits of a quota are
        // not stranded in slices too small for the requests of any one replica.
        if (target && subject.lease === target) retire(subject);
        subject.exhaustedUntil = Date.now() + exhaustedCacheMs;
        subject.exhaustedPeriodStart = start;
        return;
      }
      leaseRequests.labels('granted').inc();
      subject.exhaustedUntil = 0;
      const validUntil = sentAt + ttlMs - safetyMs;
      if (target) {
        target.held = credits(target.held + row.granted);
        target.dbRemaining = credits(target.dbRemaining + row.granted);
        target.validUntil = validUntil;
      } else {
        subject.lease = {
          id: leaseId,
          kind: subject.kind,
          subjectId: subject.id,
          periodStart: start,
          dbRemaining: row.granted,
          held: row.granted,
          unsettled: 0,
          inflight: 0,
          settledSeq: 0,
          pending: null,
          validUntil,
          lastUsed: Date.now(),
        };
      }
    });
  }

  type Refusal = { ok: false; code: 'quota_exceeded' | 'quota_unavailable'; periodEnd: Date | null };
  type Reserve = { ok: true; lease: Lease } | Refusal;

  /** The subject's period start at `wall`, recomputed only when `wall` leaves the cached period. */
  function startOf(subject: Subject, wall: number): string {
    const b = subject.bounds;
    if (b !== null && wall >= b.from && wall < b.until) return b.start;
    subject.bounds = periodBounds(subject.quota.period, wall);
    return subject.bounds.start;
  }

  /**
   * Reserve `estimate` on one subject's slice in memory: the lease it was taken from, or the refusal
   * when a recent one stands; null when a lease request is needed.
   */
  function reserveNow(subject: Subject, estimate: number, wall: number, now: number): Lease | Refusal | null {
    const start = startOf(subject, wall);
    const lease = subject.lease;
    if (usable(lease, start, now) && lease.held > 0 && lease.held >= estimate) {
      lease.held = credits(lease.held - estimate);
      lease.inflight++;
      lease.lastUsed = now;
      subject.demand += estimate;
      return lease;
    }
    if (subject.exhaustedUntil > now && subject.exhaustedPeriodStart === start) {
      return { ok: false, code: 'quota_exceeded', periodEnd: periodEnd(subject.quota.period, wall) };
    }
    return null;
  }

  /** Reserve `estimate` on one subject's slice, leasing more when the slice is short. */
  async function reserve(subject: Subject, estimate: number): Promise<Reserve> {
    const wall = wallClock();
    for (let attempt = 0; attempt < 3; attempt++) {
      const now = Date.now();
      const answer = reserveNow(subject, estimate, wall, now);
      if (answer) return 'ok' in answer ? answer : { ok: true, lease: answer };
      if (!subject.acquiring) {
        const start = startOf(subject, wall);
        const lease = subject.lease;
        const held = usable(lease, start, now) ? Math.max(0, lease.held) : 0;
        const need = Math.max(credits(estimate - held), CREDIT_PRECISION);
        subject.acquiring = acquire(subject, need, estimate).finally(() => {
          subject.acquiring = null;
        });
      }
      try {
        await subject.acquiring;
      } catch (err) {
        leaseRequests.labels('error').inc();
        logger.warn({ err, subject: subject.kind, id: subject.id }, 'quota lease request failed');
        return { ok: false, code: 'quota_unavailable', periodEnd: null };
      }
    }
    // Others drained each new slice before this request got to it: treat like a refused lease.
    return { ok: false, code: 'quota_exceeded', periodEnd: periodEnd(subject.quota.period, wall) };
  }

  /** Undo reserveNow for a request refused by its other subject: the slice back, and not counted as demand. */
  function unreserve(subject: Subject | undefined, lease: Lease | null, estimate: number): void {
    if (!subject || !lease) return;
    lease.held = credits(lease.held + estimate);
    lease.inflight--;
    subject.demand = Math.max(0, subject.demand - estimate); // a sync tick may have reset it meanwhile
  }

  function refused(subject: Subject, r: Refusal, estimate: number): QuotaDecision {
    if (r.code === 'quota_unavailable' && subject.failOpen) {
      return { ok: true, ticket: { estimate, unmetered: true, leases: [] } as Ticket };
    }
    refusals.labels(r.code).inc();
    return r.code === 'quota_exceeded'
      ? { ok: false, code: r.code, subject: subject.kind, periodEnd: r.periodEnd }
      : { ok: false, code: r.code, subject: subject.kind };
  }

  function tryAdmit(tenantId: string, keyId: string | null, estimatedCredits: number): QuotaDecision | null {
    const estimate = credits(Math.max(0, estimatedCredits));
    const tenant = tenantSubjects.get(tenantId);
    const key = keyId === null ? undefined : keySubjects.get(keyId);
    const wall = wallClock();
    const now = Date.now();
    let tenantLease: Lease | null = null;
    if (tenant) {
      const r = reserveNow(tenant, estimate, wall, now);
      if (r === null) return null;
      if ('ok' in r) return refused(tenant, r, estimate);
      tenantLease = r;
    }
    let leases: Lease[];
    if (key) {
      const r = reserveNow(key, estimate, wall, now);
      if (r === null || 'ok' in r) unreserve(tenant, tenantLease, estimate);
      if (r === null) return null;
      if ('ok' in r) return refused(key, r, estimate);
      leases = tenantLease ? [tenantLease, r] : [r];
    } else leases = tenantLease ? [tenantLease] : [];
    const ticket: Ticket = { estimate, unmetered: false, leases };
    return { ok: true, ticket };
  }

  async function admit(
    tenantId: string,
    keyId: string | null,
    estimatedCredits: number,
  ): Promise<QuotaDecision> {
    const now = tryAdmit(tenantId, keyId, estimatedCredits);
    if (now) return now;
    const estimate = credits(Math.max(0, estimatedCredits));
    const tenant = tenantSubjects.get(tenantId);
    const key = keyId === null ? undefined : keySubjects.get(keyId);
    const leases: Lease[] = [];
    for (const subject of [tenant, key]) {
      if (!subject) continue;
      const r = await reserve(subject, estimate);
      if (r.ok) {
        leases.push(r.lease);
        continue;
      }
      if (leases.length > 0) unreserve(tenant, leases[0]!, estimate); // only the tenant comes before a key
      return refused(subject, r, estimate);
    }
    const ticket: Ticket = { estimate, unmetered: false, leases };
    return { ok: true, ticket };
  }

  function settle(ticket: QuotaTicket, actualCredits: number): void {
    const t = ticket as Ticket;
    const actual = credits(Math.max(0, actualCredits));
    for (const lease of t.leases) {
      lease.held = credits(lease.held + t.estimate - actual);
      lease.unsettled = credits(lease.unsettled + actual);
      lease.inflight--;
    }
    t.leases = [];
  }

  async function settleLeases(leases: Lease[]): Promise<void> {
    if (leases.length === 0) return;
    const ids: string[] = [];
    const kinds: string[] = [];
    const subjectIds: string[] = [];
    const starts: string[] = [];
    const spent: number[] = [];
    const released: number[] = [];
    const seqs: number[] = [];
    for (const lease of leases) {
      // A step sent before and not acknowledged goes again unchanged; spend since then waits for
      // the next step.
      if (!lease.pending && lease.unsettled > 0) {
        const rel = Math.min(lease.unsettled, lease.dbRemaining);
        lease.pending = { seq: lease.settledSeq + 1, spent: lease.unsettled, released: rel };
      }
      const step = lease.pending;
      ids.push(lease.id);
      kinds.push(lease.kind);
      subjectIds.push(lease.subjectId);
      starts.push(lease.periodStart);
      spent.push(step?.spent ?? 0);
      released.push(step?.released ?? 0);
      seqs.push(step?.seq ?? 0);
    }
    const sentAt = Date.now();
    const { rows } = await pool.query<{ lease_id: string; live: boolean; duplicate: boolean }>(SETTLE, [
      ids,
      kinds,
      subjectIds,
      starts,
      spent,
      released,
      ttlMs,
      seqs,
    ]);
    const live = new Map<string, boolean>();
    for (const r of rows) {
      live.set(r.lease_id, r.live);
      if (r.duplicate) duplicateSettlements.inc();
    }
    for (const lease of leases) {
      const step = lease.pending;
      if (step) {
        // Charged now or by the earlier send whose answer was lost: either way it is done.
        lease.unsettled = credits(lease.unsettled - step.spent);
        lease.dbRemaining = credits(lease.dbRemaining - step.released);
        lease.settledSeq = step.seq;
        lease.pending = null;
      }
      if (live.get(lease.id)) lease.validUntil = Math.max(lease.validUntil, sentAt + ttlMs - safetyMs);
      else lease.validUntil = 0; // reclaimed while we were away: never admit on it again
    }
  }

  async function syncOnce(): Promise<void> {
    const stop = syncDuration.startTimer();
    try {
      if (pendingBalances) {
        const values = pendingBalances;
        await serial(() => pool.query(UPSERT_BALANCES, values));
        if (pendingBalances === values) pendingBalances = null;
        // Lease requests refused before the new limits were stored must not keep refusing for
        // exhaustedCacheMs: a raised limit applies at once.
        for (const s of subjects.values()) s.exhaustedUntil = 0;
      }
      const now = Date.now();
      const wall = wallClock();
      for (const s of subjects.values()) {
        const lease = s.lease;
        if (!lease) continue;
        const stale = lease.periodStart !== startOf(s, wall) || now >= lease.validUntil;
        const idle = lease.inflight === 0 && now - lease.lastUsed > idleReleaseMs;
        if (stale || idle || closed) retire(s);
      }
      const renewBefore = now + ttlMs / 2;
      // Retired leases with requests still in flight (streams can last minutes) keep being renewed,
      // or the sweep would hand their reservation to others before those requests settle.
      const toSettle = retiring.filter(
        (l) => l.unsettled > 0 || l.pending !== null || (l.inflight > 0 && l.validUntil < renewBefore),
      );
      for (const s of subjects.values()) {
        const lease = s.lease;
        if (lease && (lease.unsettled > 0 || lease.pending !== null || lease.validUntil < renewBefore))
          toSettle.push(lease);
      }
      if (toSettle.length > 0) await serial(() => settleLeases(toSettle));
      // Return retired leases once nothing is in flight on them and their spend is settled.
      // A lease whose tickets were never settled is returned anyway once the database has expired it.
      const done = retiring.filter(
        (l) => (l.inflight <= 0 && l.unsettled === 0 && l.pending === null) || now > l.validUntil + ttlMs,
      );
      if (done.length > 0) {
        await serial(() => pool.query(RELEASE, [done.map((l) => l.id)]));
        retiring = retiring.filter((l) => !done.includes(l));
      }
      if (now - lastReclaim > ttlMs / 2) {
        lastReclaim = now;
        await serial(() => pool.query(RECLAIM_EXPIRED));
      }
    } finally {
      stop();
    }
  }

  let syncing: Promise<void> | null = null;
  function sync(): Promise<void> {
    syncing ??= syncOnce().finally(() => {
      syncing = null;
    });
    return syncing;
  }

  /**
   * A sync tick that starts after this call. A tick already in flight may be past the point where it
   * reads what the caller just changed (pendingBalances): joining it would return before that is done.
   */
  async function syncFromNow(): Promise<void> {
    if (syncing) await syncing.catch(() => undefined);
    await sync();
  }

  const timer = setInterval(() => {
    sync().catch((err: unknown) => logger.warn({ err }, 'quota sync failed; retrying'));
  }, syncIntervalMs);
  timer.unref();

  return {
    async applySnapshot(snapshot) {
      const wall = wallClock();
      const next = new Map<string, Subject>();
      const failOpenOf = new Map(snapshot.tenants.map((t) => [t.id, t.failOpen]));
      const entries: { kind: SubjectKind; id: string; quota: Quota; failOpen: boolean }[] = [];
      for (const t of snapshot.tenants) {
        if (t.quota) entries.push({ kind: 'tenant', id: t.id, quota: t.quota, failOpen: t.failOpen });
      }
      for (const k of snapshot.keys) {
        if (k.quota)
          entries.push({ kind: 'key', id: k.id, quota: k.quota, failOpen: failOpenOf.get(k.tenant) ?? true });
      }
      for (const e of entries) {
        const key = subjectKey(e.kind, e.id);
        const existing = subjects.get(key);
        if (existing && existing.quota.period === e.quota.period) {
          existing.quota = e.quota;
          existing.failOpen = e.failOpen;
          next.set(key, existing);
        } else {
          if (existing) retire(existing);
          next.set(key, {
            ...e,
            lease: null,
            acquiring: null,
            exhaustedUntil: 0,
            exhaustedPeriodStart: '',
            bounds: null,
            rolledTo: '',
            demand: 0,
            demandSince: Date.now(),
            rate: 0,
          });
        }
      }
      for (const [key, s] of subjects) if (!next.has(key)) retire(s);
      subjects.clear();
      tenantSubjects.clear();
      keySubjects.clear();
      for (const [key, s] of next) {
        subjects.set(key, s);
        (s.kind === 'tenant' ? tenantSubjects : keySubjects).set(s.id, s);
      }
      pendingBalances = [
        entries.map((e) => e.kind),
        entries.map((e) => e.id),
        entries.map((e) => e.quota.period),
        entries.map((e) => periodStart(e.quota.period, wall)),
        entries.map((e) => e.quota.credits),
      ];
      await syncFromNow(); // stores the limits (and then clears the refusal cache) before returning
    },
    admit,
    tryAdmit,
    settle,
    // Callers (tests, admin) mean a tick that sees what they did just before, not one already running.
    sync: syncFromNow,
    async close() {
      closed = true;
      clearInterval(timer);
      await sync().catch(() => undefined);
      await sync();
    },
    outstanding() {
      const out = new Map<string, number>();
      for (const [key, s] of subjects) if (s.lease) out.set(key, Math.max(0, s.lease.held));
      return out;
    },
  };
}
