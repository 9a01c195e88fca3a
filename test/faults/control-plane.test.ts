// The control plane failing around serving data planes: broken, forged and older snapshots pushed under
// load; the operator killed; a data plane started while the operator is down.
//
// The operator here is operator/server.ts (its real GET /snapshot port) fed a fixed snapshot: what a data
// plane sees of the operator is that port and its pushes, and the cluster tier (test/cluster/operator*.ts)
// already runs the whole operator against a real API server. Data planes are real processes.
import { Registry } from 'prom-client';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import type { Snapshot } from '../../dataplane/config/snapshot.ts';
import { startOperatorServer } from '../../operator/server.ts';
import { startSimulator } from '../fixtures/gpusim/index.ts';
import { useTestDatabase } from '../fixtures/postgres.ts';
import { startDataPlaneProcess, type DataPlaneProcess } from '../fixtures/processes.ts';
import { apiKey, backend, chat, snapshot, tenant, until } from '../dataplane/harness.ts';
import { countByStatus, eventually, reconcile, SOAK, steadyLoad } from './load.ts';
import { startFleet } from './fleet.ts';

const db = useTestDatabase();
const TOKEN = 'push-token-for-tests';
const FAULT_MS = SOAK ? 20_000 : 2_000;

async function put(adminUrl: string, body: string, token = TOKEN): Promise<number> {
  const res = await request(adminUrl + '/config', {
    method: 'PUT',
    body,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
  });
  await res.body.dump();
  return res.statusCode;
}

describe('config pushes under load', () => {
  it('refuses broken, forged, unauthenticated and older snapshots while serving, and keeps the last good one', async () => {
    const fleet = await startFleet({ databaseUrl: db.url, endpoints: 2 });
    try {
      const good = fleet.plane.revision();
      const load = steadyLoad({ url: fleet.plane.url, secrets: fleet.secrets, concurrency: 4 });
      await load.settle(50);
      const current = snapshot({
        backends: [
          backend(
            'team/sim',
            fleet.sims.map((s) => s.url),
          ),
        ],
      });
      const older = { ...current, generatedAt: '2020-01-01T00:00:00.000Z' };
      const cases: { name: string; body: string; token?: string; expect: number[] }[] = [
        { name: 'not JSON', body: '{"schemaVersion": 1, ', expect: [400] },
        { name: 'empty object', body: '{}', expect: [400] },
        {
          name: 'unknown schema version',
          body: JSON.stringify({ ...current, schemaVersion: 99 }),
          expect: [400],
        },
        {
          name: 'revision that does not match the content',
          body: JSON.stringify({ ...current, revision: 'f'.repeat(64) }),
          expect: [400],
        },
        {
          name: 'endpoint URL that is not a URL',
          body: JSON.stringify(
            snapshot({ backends: [backend('team/sim', ['not a url'])], generatedAt: '2030-01-01T00:00:00Z' }),
          ),
          expect: [400],
        },
        { name: 'older than the one in use', body: JSON.stringify(older), expect: [400, 409] },
        { name: 'wrong push token', body: JSON.stringify(current), token: 'wrong', expect: [401] },
        { name: 'empty push token', body: JSON.stringify(current), token: '', expect: [401] },
      ];
      const seen: Record<string, number> = {};
      for (const c of cases) {
        seen[c.name] = await put(fleet.plane.adminUrl, c.body, c.token);
        expect(fleet.plane.revision()).toBe(good);
      }
      await load.settle(50);
      const outcomes = await load.stop();
      await fleet.writer.flush();
      const r = await reconcile(fleet.pool, outcomes, fleet.allSims);
      console.log(
        `bad pushes under load: ${JSON.stringify(seen)}; load ${JSON.stringify(countByStatus(outcomes))}; ${JSON.stringify(r)}`,
      );
      for (const c of cases) expect(c.expect, c.name).toContain(seen[c.name]);
      expect(outcomes.every((o) => o.status === 200)).toBe(true);
      expect(r.lost).toBe(0);
      expect(r.doubled).toBe(0);
    } finally {
      await fleet.close();
    }
  });
});

function startPlaneProcess(operatorUrl: string): Promise<DataPlaneProcess> {
  return startDataPlaneProcess({ token: TOKEN, args: ['--operator-url', operatorUrl], drainMs: 1000 });
}

async function startOperator(snap: Snapshot, port = 0): Promise<{ url: string; close(): Promise<void> }> {
  const { server, url } = await startOperatorServer(
    {
      registry: new Registry(),
      snapshot: () => snap,
      token: () => TOKEN,
      ready: () => true,
      isLeader: () => true,
    },
    '127.0.0.1',
    port,
  );
  return {
    url,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

async function status(url: string, secret?: string): Promise<number> {
  const res = await request(url, {
    method: secret ? 'POST' : 'GET',
    headers: secret ? { authorization: `Bearer ${secret}`, 'content-type': 'application/json' } : {},
    ...(secret ? { body: chat('sim', { max_tokens: 2 }) } : {}),
  });
  await res.body.dump();
  return res.statusCode;
}

/** The bootstrap's backoff: 200 ms doubling, capped at 5 s (docs/decisions.md). */
const BACKOFF_MS = [200, 400, 800, 1600, 3200, 5000, 5000, 5000];
/** Failed bootstrap attempts to wait for while the operator is away: enough to reach the cap. */
const FAILED_ATTEMPTS = 6;

interface AttemptLine {
  time: number;
  attempt: number;
  retryInMs?: number;
}

describe('operator away', () => {
  it('operator killed: a data plane keeps serving its last snapshot; one started meanwhile stays unready (503) until the operator returns', async () => {
    const sim = await startSimulator({
      host: '127.0.0.1',
      port: 0,
      models: ['sim'],
      prefillMsPerToken: 0,
      decodeMsPerToken: 1,
    });
    const key = apiKey('team/a');
    const snap = snapshot({
      backends: [backend('team/sim', [sim.url])],
      tenants: [tenant('team/a')],
      keys: [key.key],
    });
    let operator = await startOperator(snap);
    const operatorPort = Number(new URL(operator.url).port);
    const planes: DataPlaneProcess[] = [];
    try {
      const first = await startPlaneProcess(operator.url);
      planes.push(first);
      await until(() => first.log().includes('snapshot from the operator'), 20_000);
      const load = steadyLoad({
        url: first.url,
        secrets: { 'team/a': key.secret },
        concurrency: 4,
        maxMs: 60_000,
      });
      await load.settle(50);
      const killedAt = Date.now();
      await operator.close();
      const late = await startPlaneProcess(operator.url);
      planes.push(late);
      await new Promise((r) => setTimeout(r, FAULT_MS));
      // More than 20 answers while the operator is away, counted rather than expected of FAULT_MS: a
      // loaded machine keeps it away a little longer instead (bounded). The late plane's failed attempts
      // are counted too, until its backoff has reached the cap.
      const startedDuring = () => load.outcomes.filter((o) => o.startedAt > killedAt);
      const unreachable = () => late.lines<AttemptLine>('operator unreachable; retrying');
      await eventually(() => startedDuring().length > 20, 30_000);
      await eventually(() => unreachable().length >= FAILED_ATTEMPTS, 30_000);
      const lateReady = await status(late.adminUrl + '/readyz');
      const lateProxy = await status(late.url + '/v1/chat/completions', key.secret);
      const firstReady = await status(first.adminUrl + '/readyz');
      const duringOutage = startedDuring();
      operator = await startOperator(snap, operatorPort);
      const back = Date.now();
      // The late data plane asks again after its current backoff (at most 5 s); bounded here, not asserted.
      const applied = await late.waitFor('snapshot from the operator', 30_000);
      const lateReadyAfter = await status(late.adminUrl + '/readyz');
      const lateProxyAfter = await status(late.url + '/v1/chat/completions', key.secret);
      const outcomes = await load.stop();
      const failures = unreachable();
      const waits = failures.map((f) => f.retryInMs);
      // How long it actually waited after each failure (measured, printed; only its lower bound is asserted).
      const times = [...failures.map((f) => f.time), applied.time as number];
      const gaps = failures.map((f, i) => times[i + 1]! - f.time);
      const failedAfterBack = failures.filter((f) => f.time > back).length;
      console.log(
        `operator away ${FAULT_MS} ms: serving plane ${duringOutage.length} requests ${JSON.stringify(countByStatus(duringOutage))}, ` +
          `readyz ${firstReady}; plane started meanwhile: readyz ${lateReady}, proxy ${lateProxy}; ` +
          `its bootstrap: ${failures.length} failed attempts announcing waits ${JSON.stringify(waits)} ms, ` +
          `waited ${JSON.stringify(gaps)} ms, ${failedAfterBack} failed after the operator returned, ` +
          `snapshot applied at attempt ${String(applied.attempt)} ${(applied.time as number) - back} ms after it returned ` +
          `(readyz ${lateReadyAfter}, proxy ${lateProxyAfter}); whole load ${JSON.stringify(countByStatus(outcomes))}`,
      );
      expect(duringOutage.length).toBeGreaterThan(20);
      expect(duringOutage.every((o) => o.status === 200)).toBe(true);
      expect(firstReady).toBe(200);
      expect(lateReady).toBe(503);
      expect(lateProxy).toBe(503);
      // The backoff the data plane states: attempts numbered without a gap, 200 ms doubling up to the
      // 5 s cap, which the count above made it reach.
      expect(failures.map((f) => f.attempt)).toEqual(failures.map((_, i) => i + 1));
      expect(failures.length).toBeGreaterThanOrEqual(FAILED_ATTEMPTS);
      expect(waits).toEqual(failures.map((_, i) => BACKOFF_MS[Math.min(i, BACKOFF_MS.length - 1)]));
      // It waited at least that long each time (10 ms: pino's wall clock against the timers' monotonic one).
      for (const [i, gap] of gaps.entries())
        expect(gap, `wait after attempt ${i + 1}`).toBeGreaterThanOrEqual(waits[i]! - 10);
      // Once the operator is back, the attempt in flight may still fail; the next one applies the snapshot.
      expect(failedAfterBack).toBeLessThanOrEqual(1);
      expect(applied.attempt).toBe(failures.length + 1);
      expect(lateReadyAfter).toBe(200);
      expect(lateProxyAfter).toBe(200);
    } finally {
      for (const p of planes) await p.kill();
      await operator.close().catch(() => undefined);
      await sim.close();
    }
  });
});
