// /readyz says why: each check (snapshot, draining, metering) with its reason, 503 when a required one
// fails. The metering check runs over the real metering writer pointed at a Postgres port where nothing
// listens (an outage), with a small buffer so a handful of requests fill it.
import pg from 'pg';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMeteringWriter, type MeteringWriter } from '../../dataplane/metering/writer.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import {
  apiKey,
  backend,
  chat,
  quietLogger,
  readyz,
  snapshot,
  startPlane,
  startUpstream,
  tenant,
  type Upstream,
} from './harness.ts';

async function send(plane: DataPlane, secret: string): Promise<number> {
  const res = await request(`${plane.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
    body: chat('m'),
  });
  await res.body.dump();
  return res.statusCode;
}

describe('/readyz reasons', () => {
  let up: Upstream;
  let release: () => void = () => undefined;
  const held = new Promise<void>((r) => (release = r));

  beforeAll(async () => {
    // Answers at once, except /v1/hold which waits for the test to let it go (a request in flight).
    up = await startUpstream('model', (req, res) => {
      const answer = () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{"choices":[]}');
      };
      if (req.url === '/v1/hold') void held.then(answer);
      else answer();
    });
  });
  afterAll(async () => {
    release();
    await up.close();
  });

  it('is not ready before a snapshot, saying so, and ready with the revision after one', async () => {
    const plane = await startPlane();
    try {
      const before = await readyz(plane);
      expect(before.status).toBe(503);
      expect(before.body).toMatchObject({ status: 'not ready', ready: false, revision: null });
      expect(before.body.checks.snapshot).toEqual({
        ok: false,
        required: true,
        reason: 'no snapshot applied yet: waiting for a push (PUT /config) or the operator',
      });
      expect(before.body.checks.draining).toEqual({ ok: true, required: true, reason: 'accepting requests' });
      expect(before.body.checks.metering).toEqual({
        ok: true,
        required: false,
        reason: 'no usage sink: usage is not recorded',
      });
      const snap = snapshot({ backends: [backend('ns/a', [up.url])] });
      expect(plane.applySnapshot(snap).accepted).toBe(true);
      const after = await readyz(plane);
      expect(after.status).toBe(200);
      expect(after.body).toMatchObject({ status: 'ready', ready: true, revision: snap.revision });
      expect(after.body.checks.snapshot.ok).toBe(true);
      expect(after.body.checks.snapshot.reason).toMatch(
        new RegExp(`^revision ${snap.revision.slice(0, 12)} applied, content \\d+ s old$`),
      );
    } finally {
      await plane.close({ drainMs: 0 });
    }
  });

  it('is draining while SIGTERM waits for in-flight requests', async () => {
    const plane = await startPlane();
    const key = apiKey('t');
    plane.applySnapshot(
      snapshot({ backends: [backend('ns/a', [up.url])], tenants: [tenant('t')], keys: [key.key] }),
    );
    const inflight = request(`${plane.url}/v1/hold`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key.secret}`, 'content-type': 'application/json' },
      body: chat('m'),
    });
    // The request reached the upstream: it is in flight when the drain starts.
    for (let i = 0; i < 500 && !up.requests.some((r) => r.url === '/v1/hold'); i++)
      await new Promise((r) => setTimeout(r, 10));
    expect(up.requests.some((r) => r.url === '/v1/hold')).toBe(true);
    const closing = plane.close({ drainMs: 60_000 });
    try {
      const r = await readyz(plane);
      expect(r.status).toBe(503);
      expect(r.body.status).toBe('draining');
      expect(r.body.checks.draining).toEqual({
        ok: false,
        required: true,
        reason: 'stopping after SIGTERM: draining in-flight requests',
      });
    } finally {
      release();
      await (await inflight).body.dump();
      await closing;
    }
  });

  describe('metering during a Postgres outage', () => {
    let pool: pg.Pool;
    let writer: MeteringWriter;
    let plane: DataPlane;
    const open = apiKey('team/open');
    const closed = apiKey('team/closed');
    let b: ReturnType<typeof backend>;

    beforeAll(async () => {
      // Port 9 on loopback: nothing listens, every flush fails and the events stay buffered. 6 events of
      // room, batches of 2: fail-closed tenants are refused from 4 buffered events on.
      pool = new pg.Pool({ connectionString: 'postgres://gpugate@127.0.0.1:9/none' });
      writer = createMeteringWriter({
        pool,
        maxBuffer: 6,
        maxBatch: 2,
        retryMinMs: 60_000,
        retryMaxMs: 60_000,
        logger: quietLogger,
      });
      plane = await startPlane({ usageSink: writer });
      b = backend('ns/a', [up.url]);
      plane.applySnapshot(snapshot({ backends: [b], tenants: [tenant('team/open')], keys: [open.key] }));
    });
    afterAll(async () => {
      await plane.close({ drainMs: 0 });
      await writer.flushAndClose(100);
      await pool.end();
    });

    it('reports room in the buffer while there is some', async () => {
      const r = await readyz(plane);
      expect(r.status).toBe(200);
      expect(r.body.checks.metering).toEqual({
        ok: true,
        required: false,
        reason: 'buffer can take events (0 buffered); no write has failed',
      });
    });

    it('stays ready with a full buffer while every tenant is fail-open, and says the buffer is full', async () => {
      for (let i = 0; i < 6; i++) expect(await send(plane, open.secret)).toBe(200);
      for (let i = 0; i < 200 && writer.isHealthy(); i++) await new Promise((r) => setTimeout(r, 10));
      const r = await readyz(plane);
      expect(r.status).toBe(200);
      expect(r.body.checks.metering).toEqual({
        ok: false,
        required: false,
        reason: `buffer full (${writer.depth()} buffered), fail-closed tenants are refused; writes are failing (retrying); required: every tenant is fail-open`,
      });
    });

    it('is not ready with a full buffer once a fail-closed tenant is in the snapshot', async () => {
      plane.applySnapshot(
        snapshot({
          backends: [b],
          tenants: [tenant('team/open'), tenant('team/closed', { failOpen: false })],
          keys: [open.key, closed.key],
        }),
      );
      const r = await readyz(plane);
      expect(r.status).toBe(503);
      expect(r.body.status).toBe('not ready');
      expect(r.body.checks.metering).toMatchObject({ ok: false, required: true });
      expect(r.body.checks.metering.reason).toMatch(/^buffer full .* required: 1 fail-closed tenant\(s\)$/);
      // What readiness protects: this replica refuses the fail-closed tenant.
      expect(await send(plane, closed.secret)).toBe(503);
    });
  });
});
