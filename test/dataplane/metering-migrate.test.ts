// Migrations against real Postgres: several processes at once, checksums, usage_events partitions.
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  dropUsagePartitionsBefore,
  ensureUsagePartitions,
  loadMigrations,
  migrate,
  PARTITION_DAYS_AHEAD,
} from '../../dataplane/metering/migrate.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';

const execFileAsync = promisify(execFile);
const migrateModule = join(import.meta.dirname, '../../dataplane/metering/migrate.ts');

async function partitions(pool: pg.Pool): Promise<string[]> {
  const { rows } = await pool.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1`,
  );
  return rows.map((r) => r.name);
}

describe('migrate', () => {
  const db = useTestDatabase();
  let pool: pg.Pool;
  beforeAll(() => {
    pool = suitePool(db, 4);
  });
  afterAll(() => pool.end());

  it('applies each migration exactly once when several processes migrate at the same time', async () => {
    const script = `import(${JSON.stringify(migrateModule)}).then((m) => m.migrate(process.argv[1]))
      .then((r) => console.log(JSON.stringify(r)))`;
    const runs = await Promise.all(
      Array.from({ length: 5 }, () => execFileAsync(process.execPath, ['-e', script, db.url])),
    );
    const results = runs.map((r) => JSON.parse(r.stdout) as { applied: string[] });
    const all = await loadMigrations();
    expect(results.filter((r) => r.applied.length === all.length)).toHaveLength(1);
    expect(results.filter((r) => r.applied.length === 0)).toHaveLength(4);
    const { rows } = await pool.query('SELECT version FROM gpugate_migrations ORDER BY version');
    expect(rows.map((r) => r.version)).toEqual(all.map((m) => m.version));
    expect((await partitions(pool)).length).toBe(PARTITION_DAYS_AHEAD + 2);
  });

  it('refuses to run when an applied migration file has changed, naming the file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gpugate-migrations-'));
    try {
      const [first] = await loadMigrations();
      await copyFile(
        join(import.meta.dirname, '../../dataplane/metering/migrations', first!.name),
        join(dir, first!.name),
      );
      await writeFile(join(dir, first!.name), '\n-- edited after release\n', { flag: 'a' });
      await expect(migrate(pool, { dir })).rejects.toThrow(
        new RegExp(`migration ${first!.name} .*must not change`),
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('creates usage_events partitions idempotently from concurrent callers and drops old ones', async () => {
    const days = ['2031-01-01', '2031-01-02', '2031-01-03'];
    await Promise.all([0, 1, 2, 3].map(() => ensureUsagePartitions(pool, days)));
    const names = await partitions(pool);
    expect(names).toEqual(expect.arrayContaining(['usage_events_20310101', 'usage_events_20310103']));
    await pool.query(
      `INSERT INTO usage_events (request_id, time, tenant, status, input_tokens, output_tokens,
         tokens_estimated, bytes_in, bytes_out, duration_ms, credits)
       VALUES ('r1', '2031-01-02T23:59:59.999Z', 't', 200, 1, 1, false, 1, 1, 1, 1)`,
    );
    const { rows } = await pool.query(
      `SELECT tableoid::regclass::text AS part FROM usage_events WHERE request_id = 'r1'`,
    );
    expect(rows).toEqual([{ part: 'usage_events_20310102' }]);
    const dropped = await dropUsagePartitionsBefore(pool, '2031-01-03');
    expect(dropped).toContain('usage_events_20310102');
    expect(await partitions(pool)).toEqual(['usage_events_20310103']);
  });
});
