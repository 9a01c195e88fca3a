// The CLI's usage-database commands against real Postgres: migrate, quota add (idempotent top-up),
// usage show from the roll-ups, usage reset, and the errors when the database is missing.
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadMigrations } from '../../dataplane/metering/migrate.ts';
import { createMeteringWriter } from '../../dataplane/metering/writer.ts';
import { EXIT } from '../../operator/cli/command.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { quietLogger } from './harness.ts';
import { runCliCaptured } from '../fixtures/cli.ts';

const db = useTestDatabase();
const EXAMPLES = resolve(import.meta.dirname, '..', '..', 'examples');

describe('gpugate CLI with the usage database', () => {
  let dir: string;
  let pool: pg.Pool;

  const gpugate = (...argv: string[]) =>
    runCliCaptured([...argv, '--manifests', join(dir, 'examples')], { DATABASE_URL: db.url });

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'gpugate-cli-db-'));
    cpSync(EXAMPLES, join(dir, 'examples'), { recursive: true });
    pool = suitePool(db, 2);
  });
  afterAll(async () => {
    await pool?.end();
    rmSync(dir, { recursive: true, force: true });
  });

  it('tells to run migrate on an empty database, then migrates once', async () => {
    const early = await gpugate('usage', 'show', 'research');
    expect(early.code).toBe(EXIT.failure);
    expect(early.stderr).toContain('(run gpugate migrate)');
    const first = await gpugate('migrate');
    expect(first.stdout).toMatch(/^applied 001_metering.sql, 002_quota_topups.sql/);
    expect((await gpugate('migrate')).stdout).toBe(
      `nothing to apply (${(await loadMigrations()).length} migrations already applied)\n`,
    );
  });

  it('shows usage by model and day from the roll-ups', async () => {
    const writer = createMeteringWriter({ pool, logger: quietLogger });
    const now = Date.now();
    for (let i = 0; i < 4; i++) {
      writer.record({
        requestId: `cli-${i}`,
        time: now,
        tenant: 'default/research',
        keyId: 'default/research-notebooks',
        userId: null,
        backend: 'default/llama',
        endpoint: 'ep',
        route: '/v1/',
        model: i < 3 ? 'sim-llama-8b' : 'sim-llama-70b',
        status: 200,
        inputTokens: 10,
        outputTokens: 20,
        tokensEstimated: false,
        bytesIn: 100,
        bytesOut: 200,
        durationMs: 5,
        ttfbMs: 1,
        credits: 2.5,
      });
    }
    await writer.flushAndClose();
    const r = await gpugate('usage', 'show', 'research', '-o', 'json');
    expect(r.code).toBe(0);
    const body = JSON.parse(r.stdout) as {
      totals: { requests: number; credits: number };
      byModel: { model: string; requests: number }[];
    };
    expect(body.totals).toMatchObject({ requests: 4, credits: 10 });
    expect(body.byModel[0]).toMatchObject({ model: 'sim-llama-8b', requests: 3 });
    const text = await gpugate('usage', 'show', 'research', '--key', 'research-notebooks');
    expect(text.stdout).toContain('requests       4 (0 errors)');
    expect(text.stdout).toContain('sim-llama-70b  1 requests  2.5 credits');
    const bad = await gpugate('usage', 'show', 'research', '--from', 'yesterday');
    expect(bad).toMatchObject({
      code: EXIT.usage,
      stderr: 'gpugate: --from must be a UTC day as YYYY-MM-DD, got "yesterday"\n',
    });
  });

  it('tops up once per reference, creating the balance from the Tenant quota, and resets the period spend', async () => {
    const first = await gpugate('quota', 'add', 'trial', '20', '--reference', 'pay-1', '-o', 'json');
    expect(first.code).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({
      credited: true,
      quota: { period: 'Daily', limit: 5, toppedUp: 20, remaining: 25 },
    });
    const again = await gpugate('quota', 'add', 'trial', '20', '--reference', 'pay-1');
    expect(again.stdout).toContain(
      'reference pay-1 was already credited to tenant default/trial: nothing added',
    );
    await pool.query(`UPDATE quota_balances SET used = used + 7 WHERE subject_id = 'default/trial'`);
    const reset = await gpugate('usage', 'reset', 'trial');
    expect(reset.stdout).toBe('reset the period spend of tenant default/trial: 25 credits left\n');
    const noBalance = await gpugate('usage', 'reset', 'research');
    expect(noBalance.code).toBe(EXIT.failure);
    expect(noBalance.stderr).toContain('tenant default/research has no quota balance to reset');
  });
});
