// A data plane in this process, metering into real Postgres, in front of a fleet of GPU simulators:
// the set-up every in-process fault case shares.
import pg from 'pg';
import type { Backend, Tenant } from '../../dataplane/config/snapshot.ts';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createMeteringWriter, type MeteringWriter } from '../../dataplane/metering/writer.ts';
import type { DataPlane, DataPlaneOptions } from '../../dataplane/server.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { apiKey, backend, quietLogger, snapshot, startPlane, tenant } from '../dataplane/harness.ts';

export interface Fleet {
  plane: DataPlane;
  sims: Simulator[];
  /** Every simulator ever started here, including killed and restarted ones (for reconciliation). */
  allSims: Simulator[];
  writer: MeteringWriter;
  pool: pg.Pool;
  secrets: Record<string, string>;
  /** Kills simulator i now (its in-flight requests are cut). */
  kill(i: number): Promise<void>;
  /** Starts simulator i again on the same port. */
  restart(i: number): Promise<void>;
  close(): Promise<void>;
}

export interface FleetOptions {
  databaseUrl: string;
  endpoints: number;
  tenants?: { id: string; overrides?: Partial<Tenant> }[];
  backend?: Partial<Backend>;
  plane?: Partial<DataPlaneOptions>;
}

/**
 * How many requests each simulator keeps for reconcile() and per-tenant counts: more than any fault case
 * here sends (the default 200 would silently check only the last 200 per endpoint).
 */
export const RECORDED_REQUESTS = 50_000;

const sim = (port: number) =>
  startSimulator({
    host: '127.0.0.1',
    port,
    models: ['sim'],
    prefillMsPerToken: 0,
    decodeMsPerToken: 1,
    recordRequests: RECORDED_REQUESTS,
  });

export async function startFleet(opts: FleetOptions): Promise<Fleet> {
  await migrate(opts.databaseUrl);
  const pool = new pg.Pool({ connectionString: opts.databaseUrl, max: 4 });
  pool.on('error', () => undefined);
  const writer = createMeteringWriter({ pool, logger: quietLogger, flushIntervalMs: 50 });
  const sims: Simulator[] = [];
  for (let i = 0; i < opts.endpoints; i++) sims.push(await sim(0));
  const allSims = [...sims];
  const plane = await startPlane({ usageSink: writer, ...opts.plane });
  const tenants = opts.tenants ?? [{ id: 'team/a' }];
  const keys = tenants.map((t) => apiKey(t.id));
  const result = plane.applySnapshot(
    snapshot({
      backends: [
        backend(
          'team/sim',
          sims.map((s) => s.url),
          opts.backend,
        ),
      ],
      tenants: tenants.map((t) => tenant(t.id, t.overrides)),
      keys: keys.map((k) => k.key),
    }),
  );
  if (!result.accepted) throw new Error(`fleet snapshot refused: ${JSON.stringify(result.problems)}`);
  const ports = sims.map((s) => s.port);
  return {
    plane,
    sims,
    allSims,
    writer,
    pool,
    secrets: Object.fromEntries(tenants.map((t, i) => [t.id, keys[i]!.secret])),
    kill: async (i) => {
      await sims[i]!.close();
    },
    restart: async (i) => {
      sims[i] = await sim(ports[i]!);
      allSims.push(sims[i]);
    },
    close: async () => {
      await plane.close({ drainMs: 0 });
      await writer.flushAndClose();
      await Promise.all(sims.map((s) => s.close()));
      await pool.end();
    },
  };
}
