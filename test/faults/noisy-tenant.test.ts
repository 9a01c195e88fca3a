// One tenant sending 10× its rate limit: its excess is refused with 429 and the other tenants' latency
// stays within a bound of a no-fault baseline measured in the same run (a ratio, not milliseconds).
import { describe, expect, it } from 'vitest';
import { useTestDatabase } from '../fixtures/postgres.ts';
import { countByStatus, percentile, reconcile, SOAK, steadyLoad, type Outcome } from './load.ts';
import { startFleet } from './fleet.ts';

const db = useTestDatabase();
const LIMIT_PER_MINUTE = 120; // 2 requests per second, a bucket of one minute's worth
const QUIET_REQUESTS = SOAK ? 4000 : 600;
/** Others' p99 under the noisy tenant may be at most this many times their baseline p99. */
const P99_RATIO_BOUND = 3;

describe('a noisy tenant', () => {
  it('10× the rate limit from one tenant: it gets 429s, the others keep their p99 within 3× of the baseline', async () => {
    const fleet = await startFleet({
      databaseUrl: db.url,
      endpoints: 2,
      tenants: [
        { id: 'team/noisy', overrides: { limits: { requestsPerMinute: LIMIT_PER_MINUTE } } },
        { id: 'team/b' },
        { id: 'team/c' },
      ],
    });
    const quiet = { 'team/b': fleet.secrets['team/b']!, 'team/c': fleet.secrets['team/c']! };
    const quietPhase = async (): Promise<Outcome[]> =>
      steadyLoad({
        url: fleet.plane.url,
        secrets: quiet,
        concurrency: 2,
        thinkMs: 5,
        maxRequests: QUIET_REQUESTS,
      }).done();
    try {
      const before = await quietPhase();
      const noisyKey = { 'team/noisy': fleet.secrets['team/noisy']! };
      // Empty the noisy tenant's bucket (a minute's worth) first, so what follows runs at its steady rate.
      const burstStartedAt = performance.now();
      const burst = await steadyLoad({
        url: fleet.plane.url,
        secrets: noisyKey,
        concurrency: 4,
        maxRequests: LIMIT_PER_MINUTE + 20,
      }).done();
      // 10× the limit: 4 workers, one request every 200 ms each ≈ 20 requests per second.
      const noisy = steadyLoad({
        url: fleet.plane.url,
        secrets: noisyKey,
        concurrency: 4,
        thinkMs: 200,
        maxMs: 120_000,
      });
      const during = await quietPhase();
      const noisyOutcomes = await noisy.stop();
      const noisyMs = performance.now() - burstStartedAt;
      // Whatever the machine's speed: the tenant got at most its full bucket plus the refill over the
      // time it was sending.
      const noisyAdmitted = [...burst, ...noisyOutcomes].filter((o) => o.status === 200).length;
      const admissible = LIMIT_PER_MINUTE + (noisyMs * LIMIT_PER_MINUTE) / 60_000;
      const after = await quietPhase();
      const p99 = (o: Outcome[]) =>
        percentile(
          o.filter((x) => x.status === 200).map((x) => x.ms),
          99,
        );
      const baseline = Math.max(p99(before), p99(after));
      const ratio = p99(during) / baseline;
      const noisySeconds =
        (Math.max(...noisyOutcomes.map((o) => o.startedAt)) - noisyOutcomes[0]!.startedAt) / 1000;
      await fleet.writer.flush();
      const r = await reconcile(
        fleet.pool,
        [...before, ...burst, ...during, ...after, ...noisyOutcomes],
        fleet.allSims,
      );
      console.log(
        `noisy tenant: ${(noisyOutcomes.length / noisySeconds).toFixed(0)} req/s against a limit of ${LIMIT_PER_MINUTE / 60}/s, ` +
          `${JSON.stringify(countByStatus(noisyOutcomes))}; others' p99 ${p99(before)} ms before, ${p99(during)} ms during, ` +
          `${p99(after)} ms after (ratio ${ratio.toFixed(2)}, bound ${P99_RATIO_BOUND}); ` +
          `${noisyAdmitted} admitted of ${admissible.toFixed(1)} admissible in ${(noisyMs / 1000).toFixed(1)} s; others ${JSON.stringify(countByStatus(during))}; ${JSON.stringify(r)}`,
      );
      expect(noisyOutcomes.length / noisySeconds).toBeGreaterThan((10 * LIMIT_PER_MINUTE) / 60 / 2);
      expect(noisyOutcomes.filter((o) => o.status === 429).length).toBeGreaterThan(
        noisyOutcomes.length * 0.7,
      );
      expect(noisyAdmitted).toBeLessThanOrEqual(admissible);
      expect(during.every((o) => o.status === 200)).toBe(true);
      expect(ratio).toBeLessThanOrEqual(P99_RATIO_BOUND);
      expect(r.lost).toBe(0);
      expect(r.doubled).toBe(0);
    } finally {
      await fleet.close();
    }
  });
});
