// Metering of whole data-plane processes (`node dataplane/main.ts --database-url`) under steady load
// from a real HTTP client against the GPU simulator and real Postgres: SIGTERM mid-run loses
// nothing, SIGKILL loses only the newest, unflushed events (how many is printed); and, in-process,
// streaming usage from the final SSE chunk and a stream cut by the client.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createMeteringWriter } from '../../dataplane/metering/writer.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { startDataPlaneProcess, type DataPlaneProcess } from '../fixtures/processes.ts';
import { apiKey, backend, chat, quietLogger, snapshot, startPlane, tenant, until } from './harness.ts';

const db = useTestDatabase();
/** The data plane's metering flush interval (createMeteringWriter's default, which main.ts uses). */
const FLUSH_INTERVAL_MS = 200;
const CONCURRENCY = 8;
/**
 * Requests served before the signal: counted, not timed, so a loaded machine that serves slowly still
 * signals a process with this much traffic behind it (and CONCURRENCY requests in flight).
 */
const SERVED_BEFORE_SIGNAL = 60;
/** Bounds the wait for SERVED_BEFORE_SIGNAL (and the load), inside the 60 s test timeout. */
const LOAD_DEADLINE_MS = 40_000;

interface Load {
  ok: Set<string>;
  otherStatus: Map<number, number>;
  /** Connection refused or reset before any response: never accepted. */
  notAccepted: number;
  /** A response had started and then failed. */
  brokenAfterHeaders: number;
  startedAt: number;
  stop(): Promise<void>;
}

/** CONCURRENCY closed-loop clients sending chat completions with their own request ids. */
function steadyLoad(url: string, secret: string, dispatcher: Agent): Load {
  const load: Load = {
    ok: new Set(),
    otherStatus: new Map(),
    notAccepted: 0,
    brokenAfterHeaders: 0,
    startedAt: Date.now(),
    stop: async () => undefined,
  };
  let running = true;
  const deadline = Date.now() + LOAD_DEADLINE_MS;
  const worker = async () => {
    while (running && Date.now() < deadline) {
      const id = randomUUID();
      let status = 0;
      try {
        const res = await request(url + '/v1/chat/completions', {
          method: 'POST',
          dispatcher,
          body: chat('sim', { max_tokens: 4 }),
          headers: {
            'content-type': 'application/json',
            authorization: `Bearer ${secret}`,
            'x-request-id': id,
          },
        });
        status = res.statusCode;
        await res.body.text();
        if (status === 200) load.ok.add(id);
        else load.otherStatus.set(status, (load.otherStatus.get(status) ?? 0) + 1);
      } catch {
        if (status === 0) load.notAccepted++;
        else load.brokenAfterHeaders++;
        // The gateway is going away: stop this client rather than spin on refused connections.
        if (status === 0) await new Promise((r) => setTimeout(r, 20));
      }
    }
  };
  const workers = Array.from({ length: CONCURRENCY }, worker);
  load.stop = async () => {
    running = false;
    await Promise.all(workers);
  };
  return load;
}

/** Resolves once `n` requests were served; fails naming what was seen if the load stopped first. */
async function served(load: Load, n: number): Promise<void> {
  const deadline = load.startedAt + LOAD_DEADLINE_MS;
  while (load.ok.size < n) {
    if (Date.now() > deadline)
      throw new Error(
        `only ${load.ok.size} of ${n} requests served in ${LOAD_DEADLINE_MS} ms ` +
          `(other statuses ${JSON.stringify(Object.fromEntries(load.otherStatus))}, ${load.notAccepted} refused)`,
      );
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A data-plane process serving the snapshot file and metering into the test database. */
function startProcess(snapshotFile: string): Promise<DataPlaneProcess> {
  return startDataPlaneProcess({
    args: ['--snapshot', snapshotFile, '--database-url', db.url],
    drainMs: 10000,
    ready: 'snapshot applied',
  });
}

describe('metering of a data-plane process', () => {
  let sim: Simulator;
  let pool: pg.Pool;
  let dir: string;
  let snapshotFile: string;
  const key = apiKey('team/load');

  beforeAll(async () => {
    await migrate(db.url);
    pool = suitePool(db, 2);
    sim = await startSimulator({
      host: '127.0.0.1',
      port: 0,
      models: ['sim'],
      prefillMsPerToken: 0,
      decodeMsPerToken: 2,
    });
    dir = mkdtempSync(join(tmpdir(), 'gpugate-metering-process-'));
    snapshotFile = join(dir, 'snapshot.json');
    writeFileSync(
      snapshotFile,
      JSON.stringify(
        snapshot({
          backends: [backend('team/sim', [sim.url])],
          tenants: [tenant('team/load')],
          keys: [key.key],
        }),
      ),
    );
  });
  afterAll(async () => {
    await sim?.close();
    await pool?.end();
    rmSync(dir, { recursive: true, force: true });
  });

  async function storedOf(ids: Set<string>): Promise<Set<string>> {
    const { rows } = await pool.query<{ request_id: string }>(
      'SELECT request_id FROM usage_events WHERE request_id = ANY($1::text[])',
      [[...ids]],
    );
    return new Set(rows.map((r) => r.request_id));
  }

  it('SIGTERM mid-run: every accepted request completes and every served request has its usage event', async () => {
    const plane = await startProcess(snapshotFile);
    const dispatcher = new Agent({ connections: CONCURRENCY });
    const load = steadyLoad(plane.url, key.secret, dispatcher);
    await served(load, SERVED_BEFORE_SIGNAL);
    const servedBeforeSignal = load.ok.size;
    plane.child.kill('SIGTERM');
    const code = await plane.exited;
    await load.stop();
    await dispatcher.close();
    const stored = await storedOf(load.ok);
    const lost = [...load.ok].filter((id) => !stored.has(id)).length;
    console.log(
      `SIGTERM: ${load.ok.size} served (${servedBeforeSignal} before the signal), ${lost} events lost, ` +
        `${load.brokenAfterHeaders} broken after headers, ${load.notAccepted} refused connections, ` +
        `other statuses ${JSON.stringify(Object.fromEntries(load.otherStatus))}, exit ${code}`,
    );
    expect(code).toBe(0);
    expect(plane.log()).toContain('"msg":"usage flushed"');
    expect(load.brokenAfterHeaders).toBe(0);
    expect(lost).toBe(0);
  });

  it('SIGKILL mid-run loses only the newest events, those not flushed yet, while earlier flushes kept committing (size printed)', async () => {
    const plane = await startProcess(snapshotFile);
    const dispatcher = new Agent({ connections: CONCURRENCY });
    const load = steadyLoad(plane.url, key.secret, dispatcher);
    await served(load, SERVED_BEFORE_SIGNAL);
    // The writer flushes while the load runs: Postgres catches up with that many served requests before
    // the kill (counted, bounded), which a writer that stopped flushing would never do.
    let storedBeforeKill = 0;
    await until(
      async () => (storedBeforeKill = (await storedOf(load.ok)).size) >= SERVED_BEFORE_SIGNAL,
      LOAD_DEADLINE_MS,
      'events stored while the load ran',
    );
    expect(storedBeforeKill, 'events stored while the load ran').toBeGreaterThanOrEqual(SERVED_BEFORE_SIGNAL);
    // Some traffic after that catch-up, so that the kill usually finds unflushed events to lose.
    await served(load, load.ok.size + 2 * CONCURRENCY);
    plane.child.kill('SIGKILL');
    const killedAt = Date.now();
    await plane.exited;
    await load.stop();
    await dispatcher.close();
    const rate = load.ok.size / ((killedAt - load.startedAt) / 1000);
    const stored = await storedOf(load.ok);
    // load.ok is in the order the client saw the answers.
    const order = [...load.ok];
    const lost = order.filter((id) => !stored.has(id)).length;
    const firstLost = order.findIndex((id) => !stored.has(id));
    const storedAfterFirstLost =
      firstLost < 0 ? 0 : order.slice(firstLost).filter((id) => stored.has(id)).length;
    const oneInterval = (rate * FLUSH_INTERVAL_MS) / 1000;
    console.log(
      `SIGKILL: ${load.ok.size} served at ${rate.toFixed(0)} req/s, ${lost} events lost ` +
        `(${((lost / Math.max(oneInterval, 1)) * FLUSH_INTERVAL_MS).toFixed(0)} ms of traffic; one ${FLUSH_INTERVAL_MS} ms flush interval = ${oneInterval.toFixed(1)} events; ` +
        `printed, not asserted: a stalled timer or event loop stretches it), ${storedAfterFirstLost} stored after the first lost one`,
    );
    // The writer flushes its buffer in the order events were recorded and commits one batch at a time,
    // so what a kill loses is the newest events: in the client's order, no stored event follows a lost
    // one, except for answers that reached the client in a different order than the data plane recorded
    // them: at most one per other closed-loop client (its next request is recorded after the lost one).
    expect(storedAfterFirstLost).toBeLessThanOrEqual(CONCURRENCY - 1);
    // And what was committed before the kill stayed.
    expect(lost).toBeLessThanOrEqual(order.length - storedBeforeKill);
  });
});

describe('metering of streams', () => {
  let sim: Simulator;
  let pool: pg.Pool;
  let plane: DataPlane;
  let writer: ReturnType<typeof createMeteringWriter>;
  const key = apiKey('team/stream');

  beforeAll(async () => {
    await migrate(db.url);
    pool = suitePool(db, 2);
    sim = await startSimulator({
      host: '127.0.0.1',
      port: 0,
      models: ['sim'],
      prefillMsPerToken: 0,
      decodeMsPerToken: 10,
    });
    writer = createMeteringWriter({ pool, logger: quietLogger, flushIntervalMs: 50 });
    plane = await startPlane({ usageSink: writer });
    plane.applySnapshot(
      snapshot({
        backends: [
          backend('team/sim', [sim.url], { pricing: { perRequest: 0, perInputToken: 0, perOutputToken: 1 } }),
        ],
        tenants: [tenant('team/stream')],
        keys: [key.key],
      }),
    );
  });
  afterAll(async () => {
    await plane?.close({ drainMs: 0 });
    await writer?.flushAndClose();
    await sim?.close();
    await pool?.end();
  });

  interface Row {
    status: number;
    output_tokens: number;
    input_tokens: number;
    tokens_estimated: boolean;
    bytes_out: string;
    credits: string;
  }

  /** The request's event, once the data plane has recorded it (a cut is seen a moment after the client leaves). */
  async function eventOf(id: string): Promise<Row> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      await writer.flush();
      const { rows } = await pool.query<Row>('SELECT * FROM usage_events WHERE request_id = $1', [id]);
      if (rows.length > 0 || Date.now() > deadline) {
        expect(rows).toHaveLength(1);
        return rows[0]!;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  async function stream(extra: Record<string, unknown>): Promise<{ id: string; text: string }> {
    const id = randomUUID();
    const res = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat('sim', { stream: true, max_tokens: 12, ...extra }),
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${key.secret}`,
        'x-request-id': id,
      },
    });
    expect(res.statusCode).toBe(200);
    return { id, text: await res.body.text() };
  }

  it('reads token usage from the final SSE chunk when the client asked for it', async () => {
    const { id, text } = await stream({ stream_options: { include_usage: true } });
    expect(text).toContain('"usage"');
    const row = await eventOf(id);
    expect(row).toMatchObject({ status: 200, output_tokens: 12, tokens_estimated: false });
    expect(Number(row.credits)).toBe(12);
  });

  // The gateway adds stream_options.include_usage when the client did not ask, meters the final
  // usage chunk and hides it from the client.
  it('asks the backend for usage in the final chunk when the client did not', async () => {
    const { id } = await stream({});
    const row = await eventOf(id);
    expect(row.tokens_estimated).toBe(false);
  });

  it('meters a stream cut by the client for what was delivered', async () => {
    const id = randomUUID();
    const res = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat('sim', { stream: true, max_tokens: 400, stream_options: { include_usage: true } }),
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${key.secret}`,
        'x-request-id': id,
      },
    });
    let delivered = 0;
    let bytes = 0;
    for await (const chunk of res.body) {
      bytes += (chunk as Buffer).length;
      delivered += (chunk.toString().match(/^data: \{/gm) ?? []).length;
      if (delivered >= 5) break; // leaving the loop destroys the body: the client hangs up
    }
    const row = await eventOf(id);
    console.log(
      `cut stream: ${delivered} token chunks (${bytes} bytes) received by the client; event status ${row.status}, ` +
        `bytes_out ${row.bytes_out}, output_tokens ${row.output_tokens} (estimated ${row.tokens_estimated}), credits ${row.credits}`,
    );
    expect(row.status).toBe(499);
    expect(Number(row.bytes_out)).toBeGreaterThanOrEqual(bytes);
    expect(row.output_tokens).toBeGreaterThanOrEqual(delivered);
    // One token per `data: {` chunk the gateway passed on (each chunk is well over 100 bytes), not
    // bytes ÷ 4 over the SSE envelope (about 50 times as many).
    expect(row.output_tokens).toBeLessThanOrEqual(Math.ceil(Number(row.bytes_out) / 100));
    expect(row.tokens_estimated).toBe(true);
    // Charged for what was delivered: perOutputToken is 1 in this snapshot.
    expect(Number(row.credits)).toBe(row.output_tokens);
  });

  // A cut stream is logged as 499 but the backend answered 200: the tokens delivered before the cut
  // are charged.
  it('charges a cut stream for the tokens it delivered', async () => {
    const id = randomUUID();
    const res = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat('sim', { stream: true, max_tokens: 400 }),
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${key.secret}`,
        'x-request-id': id,
      },
    });
    let delivered = 0;
    for await (const chunk of res.body) {
      delivered += (chunk.toString().match(/^data: \{/gm) ?? []).length;
      if (delivered >= 5) break;
    }
    expect(Number((await eventOf(id)).credits)).toBeGreaterThan(0);
  });
});
