// One tenant sending about 10× its rate limit next to two quiet tenants, through the real data plane to GPU
// simulators on real sockets, metered into real Postgres. What makes a noisy tenant harmless, as invariants
// that hold at any machine speed: its excess is refused with 429 and Retry-After and never reaches a backend
// (the simulators' own request logs, by the tenant the gateway named), at most its bucket plus the refill
// over the time it was sending is admitted, the quiet tenants have every request answered and none refused
// by anyone's limit, and every answered request is metered once, to its own tenant.
//
// The others' p99 latency before, during and after is printed as a figure, not asserted: on a loaded
// 2-core machine a latency ratio measures the neighbours' load as much as the gateway.
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { useTestDatabase } from '../fixtures/postgres.ts';
import {
  countByStatus,
  eventually,
  percentile,
  reconcile,
  SOAK,
  steadyLoad,
  upstreamByTenant,
  type Outcome,
} from './load.ts';
import { startFleet } from './fleet.ts';

const db = useTestDatabase();
const LIMIT_PER_MINUTE = 120; // 2 requests per second, a bucket of one minute's worth
const QUIET_REQUESTS = SOAK ? 4000 : 600;
/** Refusals the noisy tenant must have seen before the quiet tenants start: its bucket is empty by then. */
const REFUSED_BEFORE_QUIET = 20;
const NOISY = 'team/noisy';
const QUIET = ['team/b', 'team/c'] as const;

/** Sum of the samples of one metric whose labels contain `labels` (prometheus text format). */
function metricSum(text: string, name: string, labels: string): number {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`) && l.includes(labels))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

describe('a noisy tenant', () => {
  it('10× the rate limit from one tenant: its excess gets 429 with Retry-After and never reaches a backend, it is admitted at most bucket + refill, the others are all served and metering is exact', async () => {
    const fleet = await startFleet({
      databaseUrl: db.url,
      endpoints: 2,
      tenants: [
        { id: NOISY, overrides: { limits: { requestsPerMinute: LIMIT_PER_MINUTE } } },
        ...QUIET.map((id) => ({ id })),
      ],
    });
    const quiet = Object.fromEntries(QUIET.map((id) => [id, fleet.secrets[id]!]));
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
      const noisyKey = { [NOISY]: fleet.secrets[NOISY]! };
      // Empty the noisy tenant's bucket (a minute's worth) first, so what follows runs at its steady rate.
      const noisyStartedAt = performance.now();
      const burst = await steadyLoad({
        url: fleet.plane.url,
        secrets: noisyKey,
        concurrency: 4,
        maxRequests: LIMIT_PER_MINUTE + 20,
      }).done();
      // About 10× the limit: 4 workers, one request every 200 ms each. Its rate is not asserted: what
      // matters is that it is being refused while the quiet tenants send, which is counted below.
      const noisy = steadyLoad({
        url: fleet.plane.url,
        secrets: noisyKey,
        concurrency: 4,
        thinkMs: 200,
        maxMs: 120_000,
      });
      const refusing = await eventually(
        () => noisy.outcomes.filter((o) => o.status === 429).length >= REFUSED_BEFORE_QUIET,
        60_000,
      );
      const quietStartedAt = Date.now();
      const during = await quietPhase();
      const quietEndedAt = Date.now();
      const noisyOutcomes = await noisy.stop();
      const noisyMs = performance.now() - noisyStartedAt;
      const after = await quietPhase();
      await fleet.writer.flush();

      const allNoisy = [...burst, ...noisyOutcomes];
      const allQuiet = [...before, ...during, ...after];
      const admitted = allNoisy.filter((o) => o.status === 200);
      const refused = allNoisy.filter((o) => o.status === 429);
      // Whatever the machine's speed: at most its full bucket plus the refill over the time it was sending.
      const admissible = LIMIT_PER_MINUTE + (noisyMs * LIMIT_PER_MINUTE) / 60_000;
      const refusedWhileQuietSent = noisyOutcomes.filter(
        (o) => o.status === 429 && o.startedAt >= quietStartedAt && o.startedAt <= quietEndedAt,
      ).length;
      const upstream = upstreamByTenant(fleet.allSims);
      const seenOf = (tenant: string) => upstream.get(tenant) ?? new Map<string, number>();
      const metrics = await (await request(fleet.plane.adminUrl + '/metrics')).body.text();
      const r = await reconcile(fleet.pool, [...allQuiet, ...allNoisy], fleet.allSims);
      const { rows: events } = await fleet.pool.query<{ request_id: string; tenant: string }>(
        'SELECT request_id, tenant FROM usage_events WHERE request_id = ANY($1::text[]) AND status = 200',
        [[...allQuiet, ...admitted].map((o) => o.id)],
      );
      const tenantOf = new Map([...allQuiet, ...allNoisy].map((o) => [o.id, o.tenant]));

      const p99 = (o: Outcome[]) =>
        percentile(
          o.filter((x) => x.status === 200).map((x) => x.ms),
          99,
        );
      const noisySeconds =
        (Math.max(...noisyOutcomes.map((o) => o.startedAt)) - noisyOutcomes[0]!.startedAt) / 1000;
      console.log(
        `noisy tenant: ${(noisyOutcomes.length / noisySeconds).toFixed(0)} req/s against a limit of ${LIMIT_PER_MINUTE / 60}/s ` +
          `(a figure, not asserted), ${JSON.stringify(countByStatus(allNoisy))}, ${admitted.length} admitted of ` +
          `${admissible.toFixed(1)} admissible in ${(noisyMs / 1000).toFixed(1)} s, ${refusedWhileQuietSent} refused while ` +
          `the others sent; backends saw ${seenOf(NOISY).size} of its requests; others ${JSON.stringify(countByStatus(allQuiet))}; ` +
          `others' p99 ${p99(before)} ms before, ${p99(during)} ms during, ${p99(after)} ms after ` +
          `(ratio ${(p99(during) / Math.max(p99(before), p99(after))).toFixed(2)}, printed only); ${JSON.stringify(r)}`,
      );

      // The noisy tenant: answered 200 or 429, nothing else; every 429 is the rate limit's, with a
      // Retry-After of whole seconds (its bucket refills a request every 0.5 s, all of it within a minute).
      expect(refusing).toBe(true);
      expect(admitted.length + refused.length).toBe(allNoisy.length);
      const wellFormed = (o: Outcome) =>
        o.errorCode === 'rate_limit_exceeded' &&
        /^[1-9][0-9]*$/.test(o.retryAfter ?? '') &&
        Number(o.retryAfter) <= 60;
      expect(refused.filter((o) => !wellFormed(o))).toEqual([]);
      expect(admitted.length).toBeLessThanOrEqual(admissible);
      // It was being refused while the quiet tenants sent (counted in that window, not a rate).
      expect(refusedWhileQuietSent).toBeGreaterThan(0);
      // Its excess never reached a backend: the simulators saw exactly its admitted requests, each once.
      expect(new Set(seenOf(NOISY).keys())).toEqual(new Set(admitted.map((o) => o.id)));
      expect([...seenOf(NOISY).values()].every((n) => n === 1)).toBe(true);
      // The data plane counted every refusal against the noisy tenant and none against the others.
      expect(metricSum(metrics, 'gpugate_admission_rejections_total', `tenant="${NOISY}"`)).toBe(
        refused.length,
      );
      for (const id of QUIET) {
        expect(metricSum(metrics, 'gpugate_admission_rejections_total', `tenant="${id}"`)).toBe(0);
      }
      expect(metricSum(metrics, 'gpugate_upstream_queue_rejections_total', '')).toBe(0);

      // The quiet tenants: every request answered 200, before, during and after, and every one of them
      // reached a backend exactly once, under its own tenant.
      expect(allQuiet).toHaveLength(3 * QUIET_REQUESTS);
      expect(allQuiet.filter((o) => o.status !== 200)).toEqual([]);
      for (const id of QUIET) {
        const sent = allQuiet.filter((o) => o.tenant === id).map((o) => o.id);
        expect(new Set(seenOf(id).keys())).toEqual(new Set(sent));
        expect([...seenOf(id).values()].every((n) => n === 1)).toBe(true);
      }
      expect([...upstream.keys()].sort()).toEqual([NOISY, ...QUIET].sort());

      // Metering: every answered request once, none invented, each charged to the tenant that sent it.
      expect(r.lost).toBe(0);
      expect(r.doubled).toBe(0);
      expect(r.phantom).toBe(0);
      // The 429s too: a refusal has its usage event like any answer.
      expect(r.answeredWithoutEvent).toBe(0);
      expect(r.duplicatedUpstream).toBe(0);
      expect(events).toHaveLength(allQuiet.length + admitted.length);
      expect(events.filter((e) => tenantOf.get(e.request_id) !== e.tenant)).toEqual([]);
    } finally {
      await fleet.close();
    }
  });
});
