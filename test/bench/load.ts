// Pieces the data-plane benchmarks share: a fixed-answer upstream (node:http, keep-alive) and a
// closed-loop load generator (undici Pool, n connections each sending its next request when the last
// answer has been read).
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Pool } from 'undici';

const CHAT_ANSWER = JSON.stringify({
  id: 'x',
  choices: [],
  usage: { prompt_tokens: 5, completion_tokens: 16 },
});

/** An upstream answering every request with `answer` (JSON) once the body has been read. */
export async function startFixedUpstream(answer = CHAT_ANSWER): Promise<{ url: string; close(): void }> {
  const server: Server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(answer) });
      res.end(answer);
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close() {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** `connections` loops of POST `path` for `ms`; counts 200s and the rest. */
export async function closedLoop(
  pool: Pool,
  req: { path: string; headers: Record<string, string>; body: string },
  connections: number,
  ms: number,
): Promise<{ ok: number; failed: number }> {
  const end = performance.now() + ms;
  let ok = 0;
  let failed = 0;
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (performance.now() < end) {
        const res = await pool.request({
          path: req.path,
          method: 'POST',
          headers: req.headers,
          body: req.body,
        });
        await res.body.dump();
        if (res.statusCode === 200) ok++;
        else failed++;
      }
    }),
  );
  return { ok, failed };
}
