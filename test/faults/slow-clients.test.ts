// Slow clients: headers trickled a byte at a time (slowloris) and a client that never reads the stream it
// asked for. Neither may hold the gateway's memory or other clients hostage.
import { connect, type Socket } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { apiKey, backend, chat, snapshot, startPlane, startUpstream, tenant } from '../dataplane/harness.ts';
import { countByStatus, eventually, steadyLoad } from './load.ts';

const SLOW_SOCKETS = 40;
const HEADERS_TIMEOUT_MS = 1000;
/** Bounds the replacements below: at most this many trickling sockets are ever opened. */
const MAX_SLOW_OPENED = SLOW_SOCKETS * 40;

describe('slow clients', () => {
  it('slowloris: connections trickling headers are closed after the headers timeout while others are served', async () => {
    const up = await startUpstream('up');
    const key = apiKey('team/a');
    const plane = await startPlane({ headersTimeoutMs: HEADERS_TIMEOUT_MS });
    const sockets: Socket[] = [];
    let replacing = true;
    let trickle: ReturnType<typeof setInterval> | undefined;
    try {
      plane.applySnapshot(
        snapshot({ backends: [backend('team/up', [up.url])], tenants: [tenant('team/a')], keys: [key.key] }),
      );
      const { port } = new URL(plane.url);
      // How long each trickling socket lived, from our connect() to the close the gateway caused.
      const lifetimes: number[] = [];
      // A socket the gateway closes is replaced at once, as an attacker would reconnect: the gateway holds
      // SLOW_SOCKETS trickling connections until the load below has its answers, however long a loaded
      // machine takes to give them. (The first version opened them once and needed an answer within the
      // 1 s they lived, which a loaded machine did not always give.)
      const open = (): void => {
        const at = Date.now();
        const s = connect(Number(port), '127.0.0.1');
        s.on('error', () => undefined);
        s.once('close', () => {
          lifetimes.push(Date.now() - at);
          if (replacing && sockets.length < MAX_SLOW_OPENED) open();
        });
        s.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n');
        sockets.push(s);
      };
      for (let i = 0; i < SLOW_SOCKETS; i++) open();
      // One header byte every 100 ms: never completes, never idle long enough for an idle timeout.
      trickle = setInterval(() => {
        for (const s of sockets) if (!s.destroyed) s.write('X');
      }, 100);
      const load = steadyLoad({
        url: plane.url,
        secrets: { 'team/a': key.secret },
        concurrency: 2,
        maxMs: 45_000,
      });
      // Counted, not expected within a time (bounded): more than 20 answers while the trickling sockets are
      // held, and the gateway has closed at least SLOW_SOCKETS of them by then.
      await eventually(() => load.outcomes.length > 20 && lifetimes.length >= SLOW_SOCKETS, 30_000);
      replacing = false;
      const faultEnd = Date.now();
      const outcomes = await load.stop();
      // The last ones go too, once their own headers timeout passes (bounded).
      const allClosed = await eventually(() => lifetimes.length === sockets.length, 15_000);
      clearInterval(trickle);
      const duringFault = outcomes.filter((o) => o.startedAt + o.ms <= faultEnd).length;
      console.log(
        `slowloris: ${SLOW_SOCKETS} trickling sockets held (${sockets.length} opened in all, each replaced when closed), ` +
          `${lifetimes.length} closed by the gateway after ${Math.min(...lifetimes)}..${Math.max(...lifetimes)} ms ` +
          `(headers timeout ${HEADERS_TIMEOUT_MS} ms); meanwhile ${outcomes.length} normal requests ` +
          `${JSON.stringify(countByStatus(outcomes))}, ${duringFault} answered while the sockets were held`,
      );
      expect(allClosed).toBe(true);
      // Closed by the headers timeout, never before it (1 ms: Date.now() against the server's monotonic clock).
      expect(Math.min(...lifetimes)).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 1);
      expect(duringFault).toBeGreaterThan(20);
      expect(outcomes.every((o) => o.status === 200)).toBe(true);
      expect(up.requests.every((r) => r.url === '/v1/chat/completions')).toBe(true);
    } finally {
      replacing = false;
      clearInterval(trickle);
      for (const s of sockets) s.destroy();
      await plane.close({ drainMs: 0 });
      await up.close();
    }
  });

  it('a client that never reads a stream holds a bounded amount of it: the backend is paused, not buffered', async () => {
    let written = 0;
    const CHUNK = Buffer.alloc(64 * 1024, 'a');
    const up = await startUpstream('firehose', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const pump = (): void => {
        // Bounded: at most 512 MiB even if nothing pushes back.
        while (written < 512 * 1024 * 1024) {
          written += CHUNK.length;
          if (!res.write(CHUNK)) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
    });
    const key = apiKey('team/a');
    const plane = await startPlane();
    try {
      plane.applySnapshot(
        snapshot({
          backends: [backend('team/up', [up.url], { protocol: 'generic' })],
          tenants: [tenant('team/a')],
          keys: [key.key],
        }),
      );
      const heapBefore = process.memoryUsage().heapUsed;
      const res = await request(plane.url + '/v1/stream', {
        method: 'POST',
        body: chat('sim'),
        headers: { authorization: `Bearer ${key.secret}`, 'content-type': 'application/json' },
      });
      expect(res.statusCode).toBe(200);
      // Never read the body; let backpressure settle, then see how far the backend got.
      await eventually(() => written > 0, 5_000);
      let last = -1;
      await eventually(async () => {
        await new Promise((r) => setTimeout(r, 300));
        const stalled = written === last;
        last = written;
        return stalled;
      }, 10_000);
      const heapAfter = process.memoryUsage().heapUsed;
      res.body.destroy();
      const aborted = await eventually(() => up.aborted === 1, 10_000);
      console.log(
        `non-reading client: the backend wrote ${(written / 1024 / 1024).toFixed(1)} MiB before backpressure stopped it; ` +
          `heap +${((heapAfter - heapBefore) / 1024 / 1024).toFixed(1)} MiB; upstream aborted when the client left: ${aborted}`,
      );
      // Socket buffers of three hops (backend->gateway, gateway->client) plus stream high-water marks.
      expect(written).toBeLessThan(32 * 1024 * 1024);
      expect(aborted).toBe(true);
    } finally {
      await plane.close({ drainMs: 0 });
      await up.close();
    }
  });
});
