// The request-path warm-up (dataplane/warmup.ts): /readyz stays false while it runs and true after,
// nothing of it shows on the serving plane (metrics, usage events, access log, configured backends),
// 0 turns it off, and a warm-up that cannot finish (its budget spent, or failing) still lets the
// replica become ready. Real sockets throughout: the private plane, its stub upstream and its client
// are what production runs. No timing is asserted: the budget cases use budgets no machine can meet.
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import type { DataPlane } from '../../dataplane/server.ts';
import { warmUp, warmupOptions, WarmupConfigError } from '../../dataplane/warmup.ts';
import { startDataPlaneProcess, startProcess } from '../fixtures/processes.ts';
import {
  apiKey,
  backend,
  chat,
  cleanupList,
  MemorySink,
  readyz,
  snapshotFor,
  type Upstream,
} from './harness.ts';

const cleanups = cleanupList();
afterEach(() => cleanups.close());

async function metricsText(plane: DataPlane): Promise<string> {
  const res = await request(`${plane.adminUrl}/metrics`);
  return res.body.text();
}

/** A logger whose lines the test reads (the serving plane's access log among them). */
function capturingLogger(): { logger: pino.Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      out.push(chunk.toString());
      done();
    },
  });
  return {
    logger: pino({ level: 'info' }, stream),
    lines: () =>
      out
        .join('')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

/** A plane with a configured backend, a usage sink, a registry and a captured log, warming up as told. */
async function planeWithBackend(warmup: { requests: number; budgetMs: number }) {
  const up: Upstream = await cleanups.upstream('model');
  const sink = new MemorySink();
  const log = capturingLogger();
  const plane = await cleanups.plane({
    logger: log.logger,
    registry: new Registry(),
    usageSink: sink,
    accessLog: { enabled: true, level: 'info', sampleRate: 1 },
    warmup,
  });
  const key = apiKey('tenants/a');
  expect(plane.applySnapshot(snapshotFor(backend('backends/llm', [up.url]), key.key)).accepted).toBe(true);
  return { plane, up, sink, log, secret: key.secret };
}

const requestSamples = (text: string) =>
  text
    .split('\n')
    .filter((l) => /^gpugate_(proxy_requests_total|usage_requests_total|usage_tokens_total)\{/.test(l));

describe('request-path warm-up', () => {
  it('keeps /readyz false while it runs, with the reason, though a snapshot is applied', async () => {
    // More requests than any machine serves before the first admin request is answered.
    const { plane } = await planeWithBackend({ requests: 100_000, budgetMs: 60_000 });
    const during = await readyz(plane);
    expect(during.status).toBe(503);
    expect(during.body.ready).toBe(false);
    expect(during.body.checks.snapshot.ok).toBe(true);
    expect(during.body.checks.warmup).toEqual({
      ok: false,
      required: true,
      reason: 'warming up the request path (a private plane on loopback)',
    });
    // Closing the plane ends the warm-up too (it is aborted, not awaited to its end).
    await plane.close({ drainMs: 0 });
    const outcome = await plane.warmup;
    expect(outcome.state).toBe('aborted');
  });

  it('makes /readyz true once done, and leaves no trace in metrics, usage, the access log or the backends', async () => {
    const { plane, up, sink, log, secret } = await planeWithBackend({ requests: 400, budgetMs: 60_000 });
    const outcome = await plane.warmup;
    expect(outcome).toMatchObject({ state: 'done', requests: 400 });
    const after = await readyz(plane);
    expect(after.status).toBe(200);
    expect(after.body.checks.warmup).toMatchObject({ ok: true, required: true });
    expect(after.body.checks.warmup.reason).toMatch(/^warmed up: 400 requests in \d+ ms$/);

    const text = await metricsText(plane);
    expect(requestSamples(text)).toEqual([]);
    expect(text).not.toContain('gpugate-warmup');
    expect(text).not.toContain('warmup-');
    expect(sink.events).toEqual([]);
    expect(up.requests).toEqual([]);
    expect(log.lines().filter((l) => l.msg === 'request')).toEqual([]);
    expect(log.lines().filter((l) => l.msg === 'warm-up done')).toHaveLength(1);

    // The same checks see a real request: they would have seen the warm-up's 400.
    const res = await request(`${plane.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
      body: chat('m'),
    });
    await res.body.dump();
    expect(res.statusCode).toBe(200);
    expect(requestSamples(await metricsText(plane))).toContain(
      'gpugate_proxy_requests_total{backend="backends/llm",code_class="2xx"} 1',
    );
    expect(sink.events).toHaveLength(1);
    expect(up.requests).toHaveLength(1);
    expect(log.lines().filter((l) => l.msg === 'request')).toHaveLength(1);
  });

  it('is off with 0 requests: ready as soon as a snapshot is applied', async () => {
    const { plane } = await planeWithBackend({ requests: 0, budgetMs: 2_000 });
    expect(await plane.warmup).toEqual({ state: 'off' });
    const r = await readyz(plane);
    expect(r.status).toBe(200);
    expect(r.body.checks.warmup).toEqual({ ok: true, required: true, reason: 'no warm-up configured' });
  });

  it('lets the replica become ready when the budget runs out first, and says how far it got', async () => {
    const { plane, log } = await planeWithBackend({ requests: 100_000, budgetMs: 1 });
    const outcome = await plane.warmup;
    expect(outcome.state).toBe('budget');
    expect(outcome.state === 'budget' && outcome.requests < 100_000).toBe(true);
    const r = await readyz(plane);
    expect(r.status).toBe(200);
    expect(r.body.checks.warmup.reason).toMatch(/^warm-up stopped by its time budget after \d+ requests/);
    expect(log.lines().filter((l) => l.msg === 'warm-up stopped by its time budget; serving')).toHaveLength(
      1,
    );
  });

  it('reports a failure once and never throws: the private plane could not be built', async () => {
    const heard: unknown[] = [];
    const outcome = await warmUp(
      { requests: 10, budgetMs: 60_000 },
      {
        build: () => Promise.reject(new Error('no loopback here')),
        logLevel: 'silent',
        signal: new AbortController().signal,
        onOutcome: (o) => heard.push(o),
      },
    );
    expect(outcome).toMatchObject({ state: 'failed', requests: 0, error: 'no loopback here' });
    expect(heard).toEqual([outcome]);
  });
});

describe('warm-up settings', () => {
  it('takes flags over environment and defaults to 2000 requests within 2000 ms', () => {
    expect(warmupOptions({}, {})).toEqual({ requests: 2000, budgetMs: 2000 });
    expect(warmupOptions({}, { GPUGATE_WARMUP_REQUESTS: '0' })).toEqual({ requests: 0, budgetMs: 2000 });
    expect(
      warmupOptions(
        { 'warmup-requests': '50' },
        { GPUGATE_WARMUP_REQUESTS: '9', GPUGATE_WARMUP_BUDGET_MS: '700' },
      ),
    ).toEqual({ requests: 50, budgetMs: 700 });
  });

  it('refuses bad values naming the setting, the value and what is allowed', () => {
    expect(() => warmupOptions({ 'warmup-requests': 'lots' }, {})).toThrow(
      new WarmupConfigError(
        '--warmup-requests must be an integer from 0 to 100000 (0 turns the warm-up off), got "lots"',
      ),
    );
    expect(() => warmupOptions({}, { GPUGATE_WARMUP_BUDGET_MS: '0' })).toThrow(
      new WarmupConfigError('GPUGATE_WARMUP_BUDGET_MS must be an integer from 1 to 60000, got "0"'),
    );
    expect(() => warmupOptions({}, { GPUGATE_WARMUP_REQUESTS: '-1' })).toThrow(/got "-1"/);
  });

  it('dataplane/main.ts warms up before /readyz says ready, and exits 2 on a bad setting', async () => {
    // Refused before listening, so startDataPlaneProcess (which waits for 'listening') cannot see the code.
    const bad = startProcess(
      'dataplane/main.ts',
      ['--port', '0', '--admin-port', '0', '--warmup-budget-ms', '2s'],
      {},
    );
    try {
      expect(await bad.exited).toBe(2);
      expect(bad.log()).toContain('--warmup-budget-ms must be an integer from 1 to 60000, got \\"2s\\"');
    } finally {
      await bad.kill('SIGKILL');
    }

    const p = await startDataPlaneProcess({
      token: 'push-token',
      env: { GPUGATE_WARMUP_REQUESTS: '300', GPUGATE_WARMUP_BUDGET_MS: '60000' },
    });
    cleanups.push(() => p.kill());
    const done = await p.waitFor('warm-up done');
    expect(done.requests).toBe(300);
    const r = await readyz(p);
    // Not ready for want of a snapshot only: the warm-up is over.
    expect(r.body.checks.warmup.reason).toMatch(/^warmed up: 300 requests/);
    expect(r.body.checks.snapshot.ok).toBe(false);
    expect(p.log()).not.toContain('"msg":"request"');
  });
});
