// Quota leases against real Postgres: exact small quotas across replicas, expiry of a dead
// replica's slice, period resets, snapshot changes.
import type pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Snapshot } from '../../dataplane/config/snapshot.ts';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createQuotaManager, type QuotaManager, type QuotaOptions } from '../../dataplane/metering/quota.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { tenant as tenantOf } from './harness.ts';

type Quotas = Pick<Snapshot, 'tenants' | 'keys'>;

function quotas(
  tenant: { credits: number; period: 'None' | 'Daily' | 'Monthly'; failOpen?: boolean } | null,
  key: { credits: number; period: 'None' | 'Daily' | 'Monthly' } | null = null,
): Quotas {
  return {
    tenants: [
      tenantOf('ns/acme', {
        quota: tenant && { credits: tenant.credits, period: tenant.period },
        failOpen: tenant?.failOpen ?? true,
      }),
    ],
    keys: [
      {
        id: 'ns/acme-key',
        tenant: 'ns/acme',
        sha256: '0'.repeat(64),
        prefix: 'gpg_abcd',
        disabled: false,
        expiresAt: null,
        limits: {},
        quota: key,
        allowedModels: [],
        allowedCIDRs: [],
      },
    ],
  };
}

/** Admit requests of `estimate` (costing `estimate`) until refused; returns how many got in. */
async function admitUntilRefused(
  quota: QuotaManager,
  estimate: number,
  keyId: string | null = null,
): Promise<number> {
  let admitted = 0;
  for (;;) {
    const d = await quota.admit('ns/acme', keyId, estimate);
    if (!d.ok) return admitted;
    quota.settle(d.ticket, estimate);
    admitted++;
  }
}

describe('quota leases', () => {
  const db = useTestDatabase();
  let pool: pg.Pool;
  const managers: QuotaManager[] = [];
  const pools: pg.Pool[] = [];

  function replica(options: Partial<QuotaOptions> = {}): QuotaManager {
    const own = suitePool(db, 2);
    pools.push(own);
    const m = createQuotaManager({ pool: own, syncIntervalMs: 50, ...options });
    managers.push(m);
    return m;
  }

  beforeAll(async () => {
    pool = suitePool(db, 2);
    await migrate(pool);
  });
  beforeEach(async () => {
    await Promise.all(managers.splice(0).map((m) => m.close().catch(() => undefined)));
    await Promise.all(pools.splice(0).map((p) => p.end().catch(() => undefined)));
    await pool.query('TRUNCATE quota_balances CASCADE');
  });
  afterAll(async () => {
    await Promise.all(managers.map((m) => m.close().catch(() => undefined)));
    await Promise.all(pools.map((p) => p.end().catch(() => undefined)));
    await pool.end();
  });

  async function balance(kind = 'tenant', id = 'ns/acme'): Promise<{ used: number; reserved: number }> {
    const { rows } = await pool.query<{ used: number; reserved: number }>(
      'SELECT used::float8 AS used, reserved::float8 AS reserved FROM quota_balances WHERE subject_kind = $1 AND subject_id = $2',
      [kind, id],
    );
    return rows[0]!;
  }

  it('admits exactly the quota across three replicas when requests cost what they estimated', async () => {
    const replicas = [
      replica({ exhaustedCacheMs: 0 }),
      replica({ exhaustedCacheMs: 0 }),
      replica({ exhaustedCacheMs: 0 }),
    ];
    await Promise.all(replicas.map((r) => r.applySnapshot(quotas({ credits: 100, period: 'None' }))));
    // A refused replica returns the crumbs of its slice on its next sync; others may then use them.
    let total = 0;
    for (let round = 0; round < 10; round++) {
      const admitted = await Promise.all(replicas.map((r) => admitUntilRefused(r, 1)));
      const sum = admitted.reduce((a, b) => a + b, 0);
      total += sum;
      if (round > 0 && sum === 0) break;
      // sync() is a tick that starts after the call, so the crumbs are back before the next round.
      await Promise.all(replicas.map((r) => r.sync()));
    }
    expect(total).toBe(100);
    await Promise.all(replicas.map((r) => r.close()));
    expect(await balance()).toEqual({ used: 100, reserved: 0 });
  });

  it('refuses with quota_exceeded naming the subject and the end of the period', async () => {
    const r = replica({ now: () => Date.parse('2030-03-14T10:00:00Z') });
    await r.applySnapshot(quotas({ credits: 1000, period: 'Monthly' }, { credits: 3, period: 'Daily' }));
    expect(await admitUntilRefused(r, 1, 'ns/acme-key')).toBe(3);
    expect(await r.admit('ns/acme', 'ns/acme-key', 1)).toEqual({
      ok: false,
      code: 'quota_exceeded',
      subject: 'key',
      periodEnd: new Date('2030-03-15T00:00:00Z'),
    });
    // The tenant slice reserved for the refused request was given back locally.
    expect(await admitUntilRefused(r, 1)).toBe(997);
  });

  it("returns a dead replica's slice once its lease expires", async () => {
    const dead = replica({ leaseTtlMs: 1000 });
    const alive = replica({ leaseTtlMs: 1000 });
    await dead.applySnapshot(quotas({ credits: 10, period: 'None' }));
    await alive.applySnapshot(quotas({ credits: 10, period: 'None' }));
    const d = await dead.admit('ns/acme', null, 1);
    expect(d.ok).toBe(true);
    if (d.ok) dead.settle(d.ticket, 1);
    await dead.sync();
    const slice = [...dead.outstanding().values()][0]!;
    expect(slice).toBeGreaterThan(0);
    await pools[0]!.end(); // the replica dies: no renewals, no release
    const before = await admitUntilRefused(alive, 1);
    expect(before).toBeLessThan(9);
    await new Promise((r) => setTimeout(r, 1600)); // expiry plus one sweep
    await alive.sync();
    const after = await admitUntilRefused(alive, 1);
    expect(before + after).toBe(9);
  });

  it('resets Daily and Monthly quotas at the UTC period boundary and never resets None', async () => {
    let now = Date.parse('2030-01-31T23:59:59Z');
    const clock = (): number => now;
    const daily = replica({ now: clock });
    await daily.applySnapshot(quotas({ credits: 5, period: 'Daily' }));
    expect(await admitUntilRefused(daily, 1)).toBe(5);
    const refused = await daily.admit('ns/acme', null, 1);
    expect(refused).toMatchObject({ code: 'quota_exceeded', periodEnd: new Date('2030-02-01T00:00:00Z') });
    now = Date.parse('2030-02-01T00:00:01Z');
    expect(await admitUntilRefused(daily, 1)).toBe(5);
    await daily.close();

    await pool.query('TRUNCATE quota_balances CASCADE');
    now = Date.parse('2030-02-28T12:00:00Z');
    const monthly = replica({ now: clock });
    await monthly.applySnapshot(quotas({ credits: 4, period: 'Monthly' }));
    expect(await admitUntilRefused(monthly, 1)).toBe(4);
    now = Date.parse('2030-03-01T00:00:00Z');
    expect(await admitUntilRefused(monthly, 1)).toBe(4);
    await monthly.close();

    await pool.query('TRUNCATE quota_balances CASCADE');
    now = Date.parse('2030-01-31T23:59:59Z');
    const none = replica({ now: clock });
    await none.applySnapshot(quotas({ credits: 3, period: 'None' }));
    expect(await admitUntilRefused(none, 1)).toBe(3);
    now = Date.parse('2031-01-01T00:00:00Z');
    expect(await none.admit('ns/acme', null, 1)).toMatchObject({ code: 'quota_exceeded', periodEnd: null });
  });

  it('applies a raised limit from a new snapshot at once and keeps the usage of the period', async () => {
    const r = replica();
    await r.applySnapshot(quotas({ credits: 2, period: 'Monthly' }));
    expect(await admitUntilRefused(r, 1)).toBe(2);
    await r.applySnapshot(quotas({ credits: 5, period: 'Monthly' }));
    expect(await admitUntilRefused(r, 1)).toBe(3);
    await r.close();
    expect(await balance()).toEqual({ used: 5, reserved: 0 });
  });

  // Demand (credits admitted since the last lease request) sizes the next slice. A request the key
  // refuses must not count as the tenant's demand, whether the key refused from its refusal cache
  // (tryAdmit) or after a lease request (admit). sliceSeconds is so large that ANY recorded demand
  // asks for the largest slice the balance allows (a quarter of it), while no demand asks for 4
  // requests' worth: the slice shows whether the refused requests were counted, with no timing in
  // it. The sync timer, lease expiry and idle release are pushed out of the test's way.
  it.each([
    { path: 'after a lease request for the key', exhaustedCacheMs: 0 },
    { path: "from the key's refusal cache", exhaustedCacheMs: 3_600_000 },
  ])("does not count requests the key refused $path as the tenant's demand", async ({ exhaustedCacheMs }) => {
    const r = replica({
      exhaustedCacheMs,
      syncIntervalMs: 3_600_000,
      leaseTtlMs: 3_600_000,
      idleReleaseMs: 3_600_000,
      sliceSeconds: 1e9,
      minSliceRequests: 4,
      maxShareOfAvailable: 0.25,
    });
    await r.applySnapshot(quotas({ credits: 1000, period: 'None' }, { credits: 0, period: 'None' }));
    for (let i = 0; i < 5; i++) {
      expect(await r.admit('ns/acme', 'ns/acme-key', 1)).toMatchObject({ ok: false, subject: 'key' });
    }
    // The first refusal leased the tenant 4 credits (4 requests of 1, no demand yet); every refused
    // request's credit went back to that slice, so a request of 5 needs a new lease, sized by demand.
    expect(r.outstanding().get('tenant:ns/acme')).toBe(4);
    const d = await r.admit('ns/acme', null, 5);
    expect(d.ok).toBe(true);
    const { rows } = await pool.query<{ granted: number }>(
      "SELECT sum(granted)::float8 AS granted FROM quota_leases WHERE subject_kind = 'tenant' AND subject_id = 'ns/acme'",
    );
    // No demand: 4 requests of 5 = 20 more. Had the refused requests counted: (1000 - 4) / 4 = 249 more.
    expect(rows[0]!.granted).toBe(4 + 20);
    expect(r.outstanding().get('tenant:ns/acme')).toBe(4 + 20 - 5);
    expect(await balance()).toEqual({ used: 0, reserved: 24 });
  });

  it('follows the tenant failure policy when Postgres cannot be reached for a lease', async () => {
    const open = replica();
    const closed = replica();
    await open.applySnapshot(quotas({ credits: 100, period: 'None', failOpen: true }));
    await closed.applySnapshot(quotas({ credits: 100, period: 'None', failOpen: false }));
    await Promise.all(pools.map((p) => p.end()));
    expect(await open.admit('ns/acme', null, 1)).toMatchObject({ ok: true, ticket: { unmetered: true } });
    expect(await closed.admit('ns/acme', null, 1)).toEqual({
      ok: false,
      code: 'quota_unavailable',
      subject: 'tenant',
    });
  });
});
