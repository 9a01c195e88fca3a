// Postgres stopped under load, then started again on the same data directory and port: the data plane
// keeps serving fail-open tenants, buffers their usage events, and stores every one exactly once after
// the restart. ~5 s outage in `make test`, 30 s in `make soak`.
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startEmbeddedPostgres } from '../../operator/standalone/postgres.ts';
import { countByStatus, eventually, reconcile, SOAK, steadyLoad } from './load.ts';
import { startFleet } from './fleet.ts';

const OUTAGE_MS = SOAK ? 30_000 : 5_000;

describe('Postgres outage under load', () => {
  it(`Postgres stopped for ${OUTAGE_MS / 1000} s under load, then started: requests keep being served, no event lost or doubled`, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gpugate-fault-pg-'));
    await chmod(dir, 0o755); // the server runs as the postgres user when we are root
    let server = await startEmbeddedPostgres({ dataDir: join(dir, 'data'), throwaway: true });
    const fleet = await startFleet({ databaseUrl: server.url, endpoints: 2 });
    try {
      const load = steadyLoad({
        url: fleet.plane.url,
        secrets: fleet.secrets,
        concurrency: 4,
        thinkMs: 5,
        maxMs: OUTAGE_MS + 60_000,
      });
      await load.settle(100);
      await server.stop();
      const stoppedAt = Date.now();
      await new Promise((r) => setTimeout(r, OUTAGE_MS));
      // More than 20 answers during the outage, counted rather than expected of OUTAGE_MS: a loaded
      // machine keeps Postgres down a little longer instead (bounded).
      const startedDuring = () => load.outcomes.filter((o) => o.startedAt > stoppedAt);
      await eventually(() => startedDuring().length > 20, 30_000);
      const duringOutage = startedDuring();
      const buffered = fleet.writer.depth();
      server = await startEmbeddedPostgres({ dataDir: join(dir, 'data'), port: server.port });
      const startedAt = Date.now();
      // The writer retries with backoff (at most 5 s apart); bounded wait for the backlog to drain.
      const drained = await eventually(() => fleet.writer.depth() === 0 && fleet.writer.isHealthy(), 30_000);
      const drainMs = Date.now() - startedAt;
      await load.settle(100);
      const outcomes = await load.stop();
      await fleet.writer.flush();
      const r = await reconcile(fleet.pool, outcomes, fleet.allSims);
      console.log(
        `Postgres outage ${OUTAGE_MS} ms: ${outcomes.length} requests (${duringOutage.length} during the outage, ` +
          `statuses ${JSON.stringify(countByStatus(duringOutage))}), ${buffered} events buffered at restart, ` +
          `backlog stored ${drainMs} ms after Postgres returned; ${JSON.stringify(r)}`,
      );
      expect(duringOutage.length).toBeGreaterThan(20);
      expect(duringOutage.every((o) => o.status === 200)).toBe(true);
      expect(buffered).toBeGreaterThan(0);
      expect(drained).toBe(true);
      expect(r.lost).toBe(0);
      expect(r.doubled).toBe(0);
      expect(r.phantom).toBe(0);
      expect(r.answeredWithoutEvent).toBe(0);
    } finally {
      await fleet.close();
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
