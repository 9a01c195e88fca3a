// Three data-plane OS processes (`node dataplane/main.ts --database-url`) sharing one tenant quota in
// real Postgres, 10,000 HTTP requests spread over them, costs that differ from their estimates both
// ways: overspend stays within the lease slices outstanding when the quota ran out (printed), the
// quota and the usage events agree to the credit, and no event is lost (SIGTERM flushes at the end).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { sampleReserved } from '../fixtures/quota-sampler.ts';
import { startDataPlaneProcess, type DataPlaneProcess } from '../fixtures/processes.ts';
import { apiKey, backend, snapshot, startUpstream, tenant, type Upstream } from './harness.ts';

const TENANT = 'team/shared';
const LIMIT = 4000;
const REQUESTS = 10_000;
const CONNECTIONS_PER_PROCESS = 24;
/** Every request asks for 10 tokens at 0.1 credit: estimated at 1 credit. */
const MAX_TOKENS = 10;
const PER_OUTPUT_TOKEN = 0.1;

/** Tokens the upstream reports for request `n`: 8..16, so it costs 0.8..1.6 credits. */
const outputTokensOf = (n: number): number => 8 + ((n * 7919) % 9);

describe('three data-plane processes sharing one tenant quota', () => {
  const db = useTestDatabase();
  const key = apiKey(TENANT);
  let upstream: Upstream;
  let procs: DataPlaneProcess[] = [];
  let admin: pg.Pool;
  let dir = '';

  beforeAll(async () => {
    admin = suitePool(db, 2);
    await migrate(admin);
    upstream = await startUpstream(
      'priced',
      (_req, res, body) => {
        const n = Number((JSON.parse(body.toString('utf8')) as { user: string }).user);
        const payload = JSON.stringify({
          id: `c-${n}`,
          object: 'chat.completion',
          choices: [{ index: 0, message: { role: 'assistant', content: 'ok' } }],
          usage: { prompt_tokens: 5, completion_tokens: outputTokensOf(n) },
        });
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(payload),
        });
        res.end(payload);
      },
      { keepBody: true },
    );
    dir = mkdtempSync(join(tmpdir(), 'gpugate-quota-processes-'));
    const file = join(dir, 'snapshot.json');
    writeFileSync(
      file,
      JSON.stringify(
        snapshot({
          backends: [
            backend('team/llm', [upstream.url], {
              pricing: { perRequest: 0, perInputToken: 0, perOutputToken: PER_OUTPUT_TOKEN },
            }),
          ],
          tenants: [tenant(TENANT, { quota: { credits: LIMIT, period: 'Monthly' }, failOpen: false })],
          keys: [key.key],
        }),
      ),
    );
    procs = await Promise.all(
      [0, 1, 2].map(() =>
        startDataPlaneProcess({ args: ['--snapshot', file, '--database-url', db.url], timeoutMs: 60_000 }),
      ),
    );
  }, 90_000);

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.kill('SIGKILL')));
    await upstream?.close();
    await admin?.end();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('ends 10,000 requests with overspend within the outstanding lease slices and every event stored once', async () => {
    let next = 0;
    const statuses = new Map<number, number>();
    const codes = new Map<string, number>();
    // The slices outstanding when the quota ran out (test/fixtures/quota-sampler.ts).
    const sampler = sampleReserved(admin, TENANT);
    const started = Date.now();

    async function worker(pool: Pool): Promise<void> {
      for (let n = next++; n < REQUESTS; n = next++) {
        const res = await pool.request({
          path: '/v1/chat/completions',
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            authorization: `Bearer ${key.secret}`,
            'x-request-id': `quota-${n}`,
          },
          body: JSON.stringify({ model: 'm', user: String(n), max_tokens: MAX_TOKENS, messages: [] }),
        });
        statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
        if (res.statusCode === 200) {
          await res.body.dump();
          continue;
        }
        const code = ((await res.body.json()) as { error: { code: string } }).error.code;
        codes.set(code, (codes.get(code) ?? 0) + 1);
        if (code === 'quota_exceeded') sampler.refused();
      }
    }
    const pools = procs.map((p) => new Pool(p.url, { connections: CONNECTIONS_PER_PROCESS }));
    try {
      await Promise.all(
        pools.flatMap((pool) => Array.from({ length: CONNECTIONS_PER_PROCESS }, () => worker(pool))),
      );
    } finally {
      await Promise.all(pools.map((p) => p.close()));
    }
    const elapsedMs = Date.now() - started;
    const { reservedWhenExhausted, samples } = await sampler.stop();
    // SIGTERM: drain, settle and return leases, flush the usage events, exit 0.
    await Promise.all(procs.map((p) => p.kill('SIGTERM')));
    const exits = await Promise.all(procs.map((p) => p.exited));

    const events = await admin.query<{ n: number; ids: number; ok: number; credits: number }>(
      `SELECT count(*)::int AS n, count(DISTINCT request_id)::int AS ids,
              count(*) FILTER (WHERE status = 200)::int AS ok, coalesce(sum(credits), 0)::float8 AS credits
       FROM usage_events`,
    );
    const daily = await admin.query<{ requests: number; credits: number }>(
      'SELECT sum(requests)::int AS requests, sum(credits)::float8 AS credits FROM usage_daily',
    );
    const balance = await admin.query<{ used: number; reserved: number }>(
      'SELECT used::float8 AS used, reserved::float8 AS reserved FROM quota_balances WHERE subject_id = $1',
      [TENANT],
    );
    const leases = await admin.query<{ n: number }>('SELECT count(*)::int AS n FROM quota_leases');
    const { used, reserved } = balance.rows[0]!;
    const overspend = Math.max(0, used - LIMIT);
    const e = events.rows[0]!;
    console.log(
      `3 processes: ${REQUESTS} requests in ${elapsedMs} ms, statuses ${JSON.stringify(Object.fromEntries(statuses))}, ` +
        `refusals ${JSON.stringify(Object.fromEntries(codes))}; used ${used.toFixed(3)} of ${LIMIT}, ` +
        `overspend ${overspend.toFixed(3)}, outstanding lease slices when the quota ran out ${reservedWhenExhausted} ` +
        `(largest of ${samples} samples in the 500 ms, or the last 5, before the first refusal); ` +
        `events stored ${e.n} (${e.ok} of them 200s), exits ${exits.join(',')}`,
    );

    expect(exits).toEqual([0, 0, 0]);
    // Only 200s and quota refusals: nothing failed for another reason.
    expect([...statuses.keys()].sort()).toEqual([200, 429]);
    expect([...codes.keys()]).toEqual(['quota_exceeded']);
    // Every request reached admission, so every one has its event, once.
    expect(e).toMatchObject({ n: REQUESTS, ids: REQUESTS, ok: statuses.get(200) });
    expect(daily.rows[0]!.requests).toBe(REQUESTS);
    // Billing and quota agree: every settled credit is in the events, and the other way round.
    expect(e.credits).toBeCloseTo(used, 6);
    expect(daily.rows[0]!.credits).toBeCloseTo(used, 6);
    // Every lease was returned on SIGTERM.
    expect(reserved).toBe(0);
    expect(leases.rows[0]!.n).toBe(0);
    expect(reservedWhenExhausted).not.toBeNull();
    expect(overspend).toBeLessThanOrEqual(reservedWhenExhausted!);
  }, 180_000);
});
