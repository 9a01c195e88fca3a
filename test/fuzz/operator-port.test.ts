// Property test over the operator's own HTTP port (operator/server.ts: GET /snapshot for data planes that
// start, /healthz, /readyz, /metrics) through raw sockets: arbitrary methods, path spellings (case, slashes,
// dot segments, encodings, query strings) and Authorization headers. The snapshot served carries a backend
// credential; invariants: never a 5xx, never a crash, and the snapshot (or anything of its secret) only
// to a request with the exact push token.
import { connect } from 'node:net';
import fc from 'fast-check';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startOperatorServer } from '../../operator/server.ts';
import { backend, snapshot } from '../dataplane/harness.ts';
import type { Server } from 'node:http';

const RUNS = process.env.GPUGATE_SOAK === '1' ? 2000 : 300;
const TOKEN = 'operator-port-push-token';
const CREDENTIAL = 'upstream-credential-7f3a9c';

/** Sends raw bytes and resolves with the status and the whole answer (bounded by 3 s). */
function send(port: number, bytes: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let data = '';
    const done = () => {
      clearTimeout(timer);
      s.destroy();
      const m = /^HTTP\/1\.1 (\d{3})/.exec(data);
      resolve({ status: m ? Number(m[1]) : 0, text: data });
    };
    const timer = setTimeout(done, 3000);
    s.on('error', done);
    s.on('data', (d: Buffer) => {
      data += d.toString('latin1');
      // One answer per connection: stop once its body is complete.
      const head = data.indexOf('\r\n\r\n');
      const length = /content-length: (\d+)/i.exec(data);
      if (head >= 0 && length && data.length >= head + 4 + Number(length[1])) done();
    });
    s.on('close', done);
    s.write(bytes, 'latin1');
  });
}

describe('operator port under arbitrary input', () => {
  let server: Server;
  let port: number;

  beforeAll(async () => {
    const snap = snapshot({
      backends: [
        backend('team/up', ['http://10.0.0.1:8000'], {
          upstreamAuth: { header: 'authorization', value: `Bearer ${CREDENTIAL}` },
        }),
      ],
    });
    const started = await startOperatorServer(
      {
        registry: new Registry(),
        snapshot: () => snap,
        token: () => TOKEN,
        ready: () => true,
        isLeader: () => true,
      },
      '127.0.0.1',
      0,
    );
    server = started.server;
    port = Number(new URL(started.url).port);
  });
  afterAll(async () => {
    await new Promise((r) => server?.close(r));
  });

  const method = fc.oneof(
    { weight: 4, arbitrary: fc.constant('GET') },
    fc.constantFrom('HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'get', 'BREW'),
  );
  const path = fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom('/snapshot', '/snapshot?x=1') },
    fc.constantFrom(
      '/snapshot',
      '/snapshot?x=1',
      '/snapshot/',
      '//snapshot',
      '/SNAPSHOT',
      '/./snapshot',
      '/x/../snapshot',
      '/%73napshot',
      '/snapshot%00',
      '/snapshot;a',
      '*',
      '/healthz',
      '/readyz',
      '/metrics',
      '/fleet',
      '/fleet/tenants/a/b',
      '/',
      '/%2e%2e/snapshot',
    ),
  );
  const printable = fc
    .array(fc.integer({ min: 0x20, max: 0x7e }), { maxLength: 60 })
    .map((codes) => String.fromCharCode(...codes));
  const authorization = fc.oneof(
    fc.constant(`Bearer ${TOKEN}`),
    fc.constant(null),
    fc.constantFrom(
      `bearer ${TOKEN}`,
      `Bearer  ${TOKEN} `,
      `Bearer ${TOKEN}x`,
      `Bearer ${TOKEN.slice(1)}`,
      `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}`,
      `${TOKEN}`,
      'Bearer',
    ),
    printable.map((t) => `Bearer ${t}`),
  );

  it('answers every request without a 5xx and gives the snapshot only for the exact token', async () => {
    const statuses: Record<number, number> = {};
    let served = 0;
    await fc.assert(
      fc.asyncProperty(method, path, authorization, async (m, p, auth) => {
        const r = await send(
          port,
          `${m} ${p} HTTP/1.1\r\nHost: x\r\n${auth === null ? '' : `Authorization: ${auth}\r\n`}Connection: close\r\n\r\n`,
        );
        statuses[r.status] = (statuses[r.status] ?? 0) + 1;
        expect(r.status, `${m} ${p}`).toBeGreaterThanOrEqual(200);
        expect(r.status, `${m} ${p}`).toBeLessThan(500);
        if (r.text.includes(CREDENTIAL)) {
          served++;
          // The token may be spelled with another case of "Bearer" or spaces around it; it must be the token.
          expect(auth?.replace(/^bearer\s+/i, '').trim(), `${m} ${p} served the snapshot`).toBe(TOKEN);
          expect(m).toBe('GET');
        }
      }),
      { numRuns: RUNS, seed: 17 },
    );
    console.log(
      `operator port fuzz: ${RUNS} runs, statuses ${JSON.stringify(statuses)}, snapshots served ${served}`,
    );
    expect(served).toBeGreaterThan(0);
  });
});
