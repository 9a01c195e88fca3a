// What a data-plane process runs for metering on one Postgres pool: the usage-event writer, the quota
// manager, the async-task store shared by replicas and the scheduled maintenance. dataplane/main.ts
// starts it when it has a database; any other host of a data plane (standalone mode) can do the same.
//
//   const m = startMetering({ pool, registry, logger });
//   createDataPlane({ ..., usageSink: m.writer, quota: m.quota, taskStore: m.tasks, usageDb: m.pool });
//   // on SIGTERM, after the data plane drained:
//   const { written, lost } = await m.close();
import type pg from 'pg';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { createMaintenance, type Maintenance } from './maintenance.ts';
import { createQuotaManager, type QuotaManager } from './quota.ts';
import { createTaskStore, type TaskStore } from './tasks.ts';
import { createMeteringWriter, type CloseOutcome, type MeteringWriter } from './writer.ts';

export interface MeteringRuntimeOptions {
  pool: pg.Pool;
  registry: Registry;
  logger: Logger;
  /** Raw usage events older than this many days are dropped (roll-ups stay). Default 90; 0: never. */
  retentionDays?: number;
  /** How long close() waits for the quota manager to settle and return its leases. Default 5 s. */
  quotaCloseTimeoutMs?: number;
}

export interface MeteringRuntime {
  pool: pg.Pool;
  writer: MeteringWriter;
  quota: QuotaManager;
  tasks: TaskStore;
  maintenance: Maintenance;
  /**
   * After the data plane drained: stop maintenance, settle and return the quota leases (an unreachable
   * database: the slices come back when their leases expire), flush the usage events. The pool stays
   * open (the caller owns it).
   */
  close(): Promise<CloseOutcome>;
}

export function startMetering(o: MeteringRuntimeOptions): MeteringRuntime {
  const { pool, registry, logger } = o;
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
      return writer.flushAndClose();
    },
  };
}
