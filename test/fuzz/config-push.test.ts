// Property tests over the admin port's PUT /config through real sockets: random mutations of a good
// snapshot (fields deleted, replaced by arbitrary JSON, array items duplicated, with and without a
// recomputed revision), wrong content types, huge and deeply nested bodies, and wrong push tokens.
// Invariants: never a 5xx, never a crash; a refused push leaves the revision in use unchanged (last
// good kept); nothing is ever applied without the push token; the proxy keeps serving.
import { connect } from 'node:net';
import fc from 'fast-check';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { contentRevision } from '../../dataplane/config/revision.ts';
import type { Snapshot } from '../../dataplane/config/snapshot.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import {
  apiKey,
  backend,
  chat,
  snapshot,
  startPlane,
  startUpstream,
  tenant,
  type Upstream,
} from '../dataplane/harness.ts';

const RUNS = process.env.GPUGATE_SOAK === '1' ? 2000 : 150;
const TOKEN = 'push-token-for-tests';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Every path (list of keys) to a value inside `v`, the root included. */
function paths(
  v: Json,
  at: (string | number)[] = [],
  out: (string | number)[][] = [],
): (string | number)[][] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out));
  else if (v !== null && typeof v === 'object')
    for (const [k, x] of Object.entries(v)) paths(x, [...at, k], out);
  return out;
}

type Mutation =
  | { op: 'delete'; pick: number }
  | { op: 'replace'; pick: number; value: Json }
  | { op: 'duplicate'; pick: number };

function mutate(doc: Json, m: Mutation): Json {
  const all = paths(doc).slice(1);
  if (all.length === 0) return doc;
  const path = all[m.pick % all.length]!;
  let parent = doc as Record<string | number, Json>;
  for (const k of path.slice(0, -1)) parent = parent[k] as Record<string | number, Json>;
  const last = path.at(-1)!;
  if (m.op === 'replace') parent[last] = m.value;
  else if (m.op === 'delete') {
    if (Array.isArray(parent)) parent.splice(last as number, 1);
    else delete parent[last];
  } else if (Array.isArray(parent))
    parent.splice(last as number, 0, structuredClone(parent[last as number]!));
  else parent[last] = structuredClone(parent[last]!);
  return doc;
}

/** Sends raw bytes on a new connection and resolves with the status line's code (0: none in 5 s). */
function rawStatus(port: number, bytes: string): Promise<number> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let data = '';
    const done = (status: number) => {
      clearTimeout(timer);
      s.destroy();
      resolve(status);
    };
    const timer = setTimeout(() => done(0), 5000);
    s.on('error', () => done(0));
    s.on('data', (d: Buffer) => {
      data += d.toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(data);
      if (m) done(Number(m[1]));
    });
    s.write(bytes, 'latin1');
  });
}

describe('PUT /config under arbitrary input', () => {
  let up: Upstream;
  let plane: DataPlane;
  const key = apiKey('team/a');
  let generation = Date.parse('2030-01-01T00:00:00Z');

  /** The good snapshot, generated now (later than every earlier one). */
  const good = (): Snapshot =>
    snapshot({
      backends: [backend('team/up', [up.url], { models: ['small'] })],
      tenants: [tenant('team/a')],
      keys: [key.key],
      settings: { clientLimits: { authFailuresPerMinute: 0, publicRequestsPerMinute: 0 } },
      generatedAt: new Date((generation += 1000)).toISOString(),
    });

  const put = async (body: string, headers: Record<string, string>) => {
    const res = await request(`${plane.adminUrl}/config`, { method: 'PUT', body, headers });
    const text = await res.body.text();
    return { status: res.statusCode, text };
  };
  const withToken = { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` };

  const served = async () => {
    const res = await request(`${plane.url}/v1/chat/completions`, {
      method: 'POST',
      body: chat('small'),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key.secret}` },
    });
    await res.body.dump();
    return res.statusCode;
  };

  beforeAll(async () => {
    up = await startUpstream('up');
    plane = await startPlane({ admin: { host: '127.0.0.1', port: 0, token: TOKEN } });
    expect((await put(JSON.stringify(good()), withToken)).status).toBe(200);
  });
  afterAll(async () => {
    await plane?.close({ drainMs: 0 });
    await up?.close();
  });

  const json: fc.Arbitrary<Json> = fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json>;
  const mutation: fc.Arbitrary<Mutation> = fc.oneof(
    fc.record({ op: fc.constant('delete' as const), pick: fc.nat() }),
    fc.record({ op: fc.constant('replace' as const), pick: fc.nat(), value: json }),
    fc.record({ op: fc.constant('duplicate' as const), pick: fc.nat() }),
  );

  it('a mutated snapshot is applied whole or refused with 400/409, never a 5xx; a refusal keeps the last good one', async () => {
    const statuses: Record<number, number> = {};
    await fc.assert(
      fc.asyncProperty(
        fc.array(mutation, { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        async (mutations, rehash) => {
          const base = good();
          let doc = structuredClone(base) as unknown as Json;
          for (const m of mutations) doc = mutate(doc, m);
          if (rehash && doc !== null && typeof doc === 'object' && !Array.isArray(doc))
            doc.revision = contentRevision(doc);
          const before = plane.revision();
          const r = await put(JSON.stringify(doc), withToken);
          statuses[r.status] = (statuses[r.status] ?? 0) + 1;
          expect([200, 400, 409], r.text).toContain(r.status);
          if (r.status === 200) {
            expect(plane.revision()).toBe((JSON.parse(r.text) as { revision: string }).revision);
            // Back to the good one: the next run starts from a known state.
            expect((await put(JSON.stringify(good()), withToken)).status).toBe(200);
          } else {
            expect(plane.revision(), 'a refused push changed the snapshot in use').toBe(before);
            expect(JSON.parse(r.text)).toMatchObject({ error: { code: expect.any(String) } });
          }
        },
      ),
      { numRuns: RUNS, seed: 20261121 },
    );
    console.log(`config push fuzz: ${RUNS} runs, statuses ${JSON.stringify(statuses)}`);
    expect(await served()).toBe(200);
  });

  it('no push without the token, whatever the Authorization header says', async () => {
    const printable = fc
      .array(fc.integer({ min: 0x20, max: 0x7e }), { maxLength: 60 })
      .map((codes) => String.fromCharCode(...codes));
    const header = fc.oneof(
      printable,
      printable.map((t) => `Bearer ${t}`),
      printable.map((t) => `bearer ${t}`),
      fc.constantFrom(
        'Bearer',
        'Bearer ',
        `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}`,
        `Bearer ${TOKEN.slice(0, -1)}`,
        `Bearer ${TOKEN.toUpperCase()}`,
        `Token ${TOKEN}`,
      ),
    );
    await fc.assert(
      fc.asyncProperty(fc.option(header, { nil: undefined }), async (authorization) => {
        fc.pre(authorization === undefined || !authorization.includes(TOKEN));
        const before = plane.revision();
        const next = good();
        const r = await put(JSON.stringify(next), {
          'content-type': 'application/json',
          ...(authorization === undefined ? {} : { authorization }),
        });
        expect(r.status).toBe(401);
        expect(plane.revision()).toBe(before);
        expect(r.text).not.toContain(TOKEN);
      }),
      { numRuns: RUNS, seed: 7 },
    );
    expect(await served()).toBe(200);
  });

  it('a body of another content type is never applied', async () => {
    const types = fc.constantFrom(
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/octet-stream',
      'application/jsonx',
      'application/xml',
      'text/json',
      'json',
      '*/*',
    );
    await fc.assert(
      fc.asyncProperty(types, async (contentType) => {
        const before = plane.revision();
        const r = await put(JSON.stringify(good()), {
          'content-type': contentType,
          authorization: `Bearer ${TOKEN}`,
        });
        expect(r.status, `${contentType}: ${r.text}`).toBeGreaterThanOrEqual(400);
        expect(r.status).toBeLessThan(500);
        expect(plane.revision()).toBe(before);
      }),
      { numRuns: 30, seed: 3 },
    );
  });

  it('huge and deeply nested bodies get a 4xx, and a body over the limit is refused from its Content-Length', async () => {
    const before = plane.revision();
    const depth = 200_000;
    const bodies = [
      '['.repeat(depth) + ']'.repeat(depth),
      '{"a":'.repeat(depth) + '1' + '}'.repeat(depth),
      JSON.stringify({ ...good(), backends: [{ id: 'x'.repeat(8 * 1024 * 1024) }] }),
      ' '.repeat(4 * 1024 * 1024),
      JSON.stringify({ ...good(), padding: 'y'.repeat(16 * 1024 * 1024) }),
    ];
    const rssBefore = process.memoryUsage().rss;
    let rssPeak = rssBefore;
    const statuses: number[] = [];
    for (const body of bodies) {
      const r = await put(body, withToken);
      statuses.push(r.status);
      rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
      expect(r.status, r.text.slice(0, 300)).toBeGreaterThanOrEqual(400);
      expect(r.status).toBeLessThan(500);
      expect(plane.revision()).toBe(before);
    }
    // Printed, not asserted: the test process also holds the bodies it sends.
    console.log(
      `config push huge bodies: statuses ${statuses.join(',')}; test process RSS ${Math.round(rssBefore / 2 ** 20)} MiB before, peak ${Math.round(rssPeak / 2 ** 20)} MiB`,
    );
    const port = Number(new URL(plane.adminUrl).port);
    // Only the headers are sent: the answers must not wait for 300 MB (or 100 MB) of body.
    const head = (auth: string, length: number) =>
      `PUT /config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${auth}Content-Length: ${length}\r\n\r\n`;
    expect(await rawStatus(port, head(`Authorization: Bearer ${TOKEN}\r\n`, 300 * 1024 * 1024))).toBe(413);
    expect(await rawStatus(port, head('Authorization: Bearer wrong\r\n', 100 * 1024 * 1024))).toBe(401);
    expect(await rawStatus(port, head('', 100 * 1024 * 1024))).toBe(401);
    expect(plane.revision()).toBe(before);
    expect(await served()).toBe(200);
  });
});
