// Slow clients: headers trickled a byte at a time (slowloris) and a client that never reads the stream it
// asked for. Neither may hold the gateway's memory or other clients hostage.
import { connect, type Socket } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { apiKey, backend, chat, snapshot, startPlane, startUpstream, tenant } from '../dataplane/harness.ts';
import { countByStatus, eventually, steadyLoad } from './load.ts';

const SLOW_SOCKETS = 40;

describe('slow clients', () => {
  it('slowloris: connections trickling headers are closed after the headers timeout while others are served', async () => {
    const up = await startUpstream('up');
    const key = apiKey('team/a');
    const plane = await startPlane({ headersTimeoutMs: 1000 });
    const sockets: Socket[] = [];
    try {
      plane.applySnapshot(
        snapshot({ backends: [backend('team/up', [up.url])], tenants: [tenant('team/a')], keys: [key.key] }),
      );
      const { port } = new URL(plane.url);
      const closedAfter: number[] = [];
      const openedAt = Date.now();
      for (let i = 0; i < SLOW_SOCKETS; i++) {
        const s = connect(Number(port), '127.0.0.1');
        s.on('error', () => undefined);
        s.once('close', () => closedAfter.push(Date.now() - openedAt));
        s.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n');
        sockets.push(s);
      }
      // One header byte every 100 ms: never completes, never idle long enough for an idle timeout.
      const trickle = setInterval(() => {
        for (const s of sockets) if (!s.destroyed) s.write('X');
      }, 100);
      const load = steadyLoad({
        url: plane.url,
        secrets: { 'team/a': key.secret },
        concurrency: 2,
        maxMs: 20_000,
      });
      const allClosed = await eventually(() => closedAfter.length === SLOW_SOCKETS, 15_000);
      clearInterval(trickle);
      // More than 20 normal answers, counted (bounded) rather than expected within the ~1 s the
      // trickling sockets live; those answered while every trickling socket was still open are
      // counted apart and must exist.
      await eventually(() => load.outcomes.length > 20, 15_000);
      const outcomes = await load.stop();
      const firstClosedAt = openedAt + Math.min(...closedAfter);
      const whileAllOpen = outcomes.filter((o) => o.startedAt + o.ms < firstClosedAt).length;
      console.log(
        `slowloris: ${SLOW_SOCKETS} trickling sockets closed after ${Math.min(...closedAfter)}..${Math.max(...closedAfter)} ms ` +
          `(headers timeout 1000 ms), ${closedAfter.length} closed; meanwhile ${outcomes.length} normal requests ${JSON.stringify(countByStatus(outcomes))}, ` +
          `${whileAllOpen} answered while all of them were open`,
      );
      expect(allClosed).toBe(true);
      expect(outcomes.length).toBeGreaterThan(20);
      expect(whileAllOpen).toBeGreaterThan(0);
      expect(outcomes.every((o) => o.status === 200)).toBe(true);
      expect(up.requests.every((r) => r.url === '/v1/chat/completions')).toBe(true);
    } finally {
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
