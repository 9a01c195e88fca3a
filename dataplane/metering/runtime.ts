// What a data-plane process runs for metering on one Postgres pool: the usage-event writer, the quota
// manager, the async-task store shared by replicas and the scheduled maintenance. dataplane/main.ts
// opens it when it has a database; any other host of a data plane (standalone mode) does the same.
//
//   const m = await openMetering({ databaseUrl, registry, logger });   // migrated, running
//   createDataPlane({ ..., usageSink: m.writer, quota: m.quota, taskStore: m.tasks, usageDb: m.pool });
//   // on SIGTERM, after the data plane drained:
//   const { written, lost } = await m.close();   // also ends the pool
import pg from 'pg';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { createMaintenance, type Maintenance } from './maintenance.ts';
import { migrate } from './migrate.ts';
import { createQuotaManager, type QuotaManager } from './quota.ts';
import { createTaskStore, type TaskStore } from './tasks.ts';
import { createMeteringWriter, type CloseOutcome, type MeteringWriter } from './writer.ts';

export interface MeteringRuntimeOptions {
  databaseUrl: string;
  registry: Registry;
  logger: Logger;
  /** Raw usage events older than this many days are dropped (roll-ups stay). Default 90; 0: never. */
  retentionDays?: number;
  /** How long close() waits for the quota manager to settle and return its leases. Default 5 s. */
  quotaCloseTimeoutMs?: number;
}

export interface MeteringRuntime {
  pool: pg.Pool;
  /** The migrations this start applied (none when the database was current). */
  applied: string[];
  writer: MeteringWriter;
  quota: QuotaManager;
  tasks: TaskStore;
  maintenance: Maintenance;
  /**
   * After the data plane drained: stop maintenance, settle and return the quota leases (an unreachable
   * database: the slices come back when their leases expire), flush the usage events, end the pool.
   */
  close(): Promise<CloseOutcome>;
}

/** Opens the pool (4 connections), migrates on it, and starts everything metering runs on it. */
export async function openMetering(o: MeteringRuntimeOptions): Promise<MeteringRuntime> {
  const { registry, logger } = o;
  const pool = new pg.Pool({ connectionString: o.databaseUrl, max: 4 });
  let applied: string[];
  try {
    ({ applied } = await migrate(pool));
  } catch (err) {
    await pool.end();
    throw err;
  }
  const writer = createMeteringWriter({ pool, registry, logger });
  const quota = createQuotaManager({ pool, registry, logger });
  const tasks = createTaskStore({ pool });
  const maintenance = createMaintenance({
    pool,
    registry,
    logger,
    ...(o.retentionDays === undefined ? {} : { retentionDays: o.retentionDays }),
  });
  const quotaCloseTimeoutMs = o.quotaCloseTimeoutMs ?? 5000;
  return {
    pool,
    applied,
    writer,
    quota,
    tasks,
    maintenance,
    async close() {
      await maintenance.close();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        quota.close(),
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`timed out after ${quotaCloseTimeoutMs} ms`)),
            quotaCloseTimeoutMs,
          );
        }),
      ])
        .catch((err: unknown) => logger.warn({ err }, 'quota leases not settled and returned'))
        .finally(() => clearTimeout(timer));
      const outcome = await writer.flushAndClose();
      await pool.end();
      return outcome;
    },
  };
}
