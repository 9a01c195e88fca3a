// The Postgres fixtures themselves: per-suite isolation and an embedded server that restarts on its data.
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { startEmbeddedPostgres } from '../../operator/standalone/postgres.ts';
import { createTestDatabase, useTestDatabase } from '../fixtures/postgres.ts';

async function query(url: string, sql: string): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await client.query(sql);
  } finally {
    await client.end();
  }
}

describe('test databases', () => {
  const db = useTestDatabase();

  it('gives each suite its own empty database that is dropped afterwards', async () => {
    await query(db.url, 'CREATE TABLE marker (id int)');
    const other = await createTestDatabase();
    try {
      expect(other.name).not.toBe(db.name);
      const tables = await query(other.url, "SELECT 1 FROM pg_tables WHERE tablename = 'marker'");
      expect(tables.rowCount).toBe(0);
    } finally {
      await other.drop();
    }
    await expect(query(other.url, 'SELECT 1')).rejects.toThrow(/does not exist/);
  });
});

describe('startEmbeddedPostgres', () => {
  it('keeps rows across stop and a start on the same data directory and port', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gpugate-pg-restart-'));
    await chmod(dir, 0o755);
    try {
      const first = await startEmbeddedPostgres({ dataDir: join(dir, 'data'), throwaway: true });
      await query(first.url, 'CREATE TABLE kept (v text); INSERT INTO kept VALUES ($$x$$)');
      await first.stop();
      await expect(query(first.url, 'SELECT 1')).rejects.toThrow();
      const second = await startEmbeddedPostgres({ dataDir: join(dir, 'data'), port: first.port });
      try {
        expect(second.url).toBe(first.url);
        expect((await query(second.url, 'SELECT v FROM kept')).rows).toEqual([{ v: 'x' }]);
      } finally {
        await second.stop();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a non-empty data directory that is not a cluster, naming it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gpugate-pg-bad-'));
    await chmod(dir, 0o755);
    try {
      await writeFile(join(dir, 'stray.txt'), 'x');
      await expect(startEmbeddedPostgres({ dataDir: dir })).rejects.toThrow(
        /neither empty nor a Postgres data directory/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
