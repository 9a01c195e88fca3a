// Versioned SQL migrations for metering and quotas, applied under an advisory lock so that any number
// of replicas (or `gpugate migrate`) can start at once: the first applies, the others wait for its
// commit and then find nothing to do. Files are dataplane/metering/migrations/NNN_name.sql, applied
// in order, each recorded with a checksum; an applied file that changed is an error, never re-run.
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';

/** pg_advisory_xact_lock key for migrations: the bytes of "gpugate1" read as an int8. */
export const MIGRATION_LOCK_KEY = 0x6770756761746531n;
/** Lock key for creating usage_events partitions. */
export const PARTITION_LOCK_KEY = 0x6770756761746532n;
/** Days of usage_events partitions created ahead of today at migrate time. */
export const PARTITION_DAYS_AHEAD = 7;

const MIGRATIONS_DIR = join(import.meta.dirname, 'migrations');

export interface Migration {
  version: number;
  name: string;
  sql: string;
  checksum: string;
}

export interface MigrateResult {
  applied: string[];
  alreadyApplied: number;
}

export async function loadMigrations(dir = MIGRATIONS_DIR): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort();
  const migrations: Migration[] = [];
  for (const file of files) {
    const match = /^(\d{3})_([a-z0-9_]+)\.sql$/.exec(file);
    if (!match) {
      throw new Error(`migration file ${file} in ${dir} must be named NNN_lower_snake.sql`);
    }
    const sql = await readFile(join(dir, file), 'utf8');
    const version = Number(match[1]);
    if (migrations.some((m) => m.version === version)) {
      throw new Error(`two migrations in ${dir} have version ${match[1]}`);
    }
    migrations.push({
      version,
      name: file,
      sql,
      checksum: createHash('sha256').update(sql).digest('hex'),
    });
  }
  return migrations;
}

/**
 * Apply pending migrations in one transaction under pg_advisory_xact_lock, then make sure the
 * usage_events partitions from yesterday to PARTITION_DAYS_AHEAD days ahead exist.
 * Transaction-scoped locks work through transaction-pooling proxies (PgBouncer), session locks do not.
 */
export async function migrate(
  connection: string | pg.Pool,
  options: { now?: Date; dir?: string } = {},
): Promise<MigrateResult> {
  const migrations = await loadMigrations(options.dir);
  const run = async (client: pg.ClientBase): Promise<MigrateResult> => {
    const result = await applyPending(client, migrations);
    await ensureUsagePartitions(
      client,
      partitionDays(utcDay(options.now ?? new Date()), PARTITION_DAYS_AHEAD),
    );
    return result;
  };
  if (typeof connection !== 'string') return withPoolClient(connection, run);
  const client = new pg.Client({ connectionString: connection });
  // A connection lost mid-statement makes the client emit 'error' as well as reject the statement; with
  // no listener that event would kill the process. The rejected statement reports the loss.
  client.on('error', () => undefined);
  try {
    await client.connect();
    return await run(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * Run `fn` on a client checked out of `pool`, for statements that must share a connection (a
 * transaction). While checked out, a client has no listener of the pool's: a connection that dies
 * then (Postgres restarts, an admin terminates the backend) emits 'error' on the client, which kills
 * the process when nobody listens. Here the statement in progress rejects instead, and a client that
 * failed is discarded rather than returned to the pool.
 */
export async function withPoolClient<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  let lost: Error | undefined;
  const onError = (err: Error): void => {
    lost ??= err;
  };
  client.on('error', onError);
  try {
    return await fn(client);
  } finally {
    client.removeListener('error', onError);
    client.release(lost);
  }
}

async function applyPending(client: pg.ClientBase, migrations: Migration[]): Promise<MigrateResult> {
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK_KEY.toString()]);
    await client.query(`CREATE TABLE IF NOT EXISTS gpugate_migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      checksum text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`);
    const { rows } = await client.query<{ version: number; name: string; checksum: string }>(
      'SELECT version, name, checksum FROM gpugate_migrations',
    );
    const done = new Map(rows.map((r) => [r.version, r]));
    const applied: string[] = [];
    for (const m of migrations) {
      const previous = done.get(m.version);
      if (previous) {
        if (previous.checksum !== m.checksum) {
          throw new Error(
            `migration ${m.name} was applied as ${previous.name} with checksum ${previous.checksum} ` +
              `but the file now has ${m.checksum}; applied migrations must not change, add a new one`,
          );
        }
        continue;
      }
      await client.query(m.sql);
      await client.query('INSERT INTO gpugate_migrations (version, name, checksum) VALUES ($1, $2, $3)', [
        m.version,
        m.name,
        m.checksum,
      ]);
      applied.push(m.name);
    }
    await client.query('COMMIT');
    return { applied, alreadyApplied: done.size };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

/** Create the usage_events partitions of these UTC days ('YYYY-MM-DD') when missing. */
export async function ensureUsagePartitions(
  db: pg.ClientBase | pg.Pool,
  days: readonly string[],
): Promise<void> {
  if (days.length === 0) return;
  // One transaction so the advisory lock covers the creations; a lone pg.Pool query would not.
  if (db instanceof pg.Pool) return withPoolClient(db, (client) => ensureUsagePartitions(client, days));
  await db.query('BEGIN');
  try {
    await db.query('SELECT pg_advisory_xact_lock($1)', [PARTITION_LOCK_KEY.toString()]);
    await db.query('SELECT gpugate_ensure_usage_partition(d) FROM unnest($1::date[]) AS d', [
      [...new Set(days)].sort(),
    ]);
    await db.query('COMMIT');
  } catch (err) {
    await db.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

/** Drop usage_events partitions of days before `before` (UTC 'YYYY-MM-DD'); returns their names. */
export async function dropUsagePartitionsBefore(pool: pg.Pool, before: string): Promise<string[]> {
  const { rows } = await pool.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'usage_events'::regclass AND c.relname < $1 ORDER BY 1`,
    [`usage_events_${before.replaceAll('-', '')}`],
  );
  for (const { name } of rows) {
    // DETACH CONCURRENTLY does not block inserts into the other partitions; a plain DROP would lock
    // usage_events for the length of the drop.
    await pool.query(`ALTER TABLE usage_events DETACH PARTITION ${pg.escapeIdentifier(name)} CONCURRENTLY`);
    await pool.query(`DROP TABLE ${pg.escapeIdentifier(name)}`);
  }
  return rows.map((r) => r.name);
}

/** The UTC day of an instant, as 'YYYY-MM-DD'. */
export function utcDay(at: Date | number): string {
  return new Date(at).toISOString().slice(0, 10);
}

export function addUtcDays(day: string, days: number): string {
  return utcDay(Date.parse(`${day}T00:00:00Z`) + days * 86_400_000);
}

/** The days whose usage_events partitions should exist: yesterday through `ahead` days after `today`. */
export function partitionDays(today: string, ahead: number): string[] {
  return Array.from({ length: ahead + 2 }, (_, i) => addUtcDays(today, i - 1));
}
