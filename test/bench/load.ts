// Pieces the data-plane benchmarks share: a fixed-answer upstream (node:http, keep-alive), the SSE
// upstream in its own process (test/bench/sse-upstream.ts), and a closed-loop load generator (undici
// Pool, n connections each sending its next request when the last answer has been read).
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { resolve } from 'node:path';
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

/**
 * test/bench/sse-upstream.ts as its own process (as a model server is): `chunks` stamped SSE events
 * `gapMs` apart per request. Killed when this process exits.
 */
export async function startSseUpstream(
  chunks: number,
  gapMs: number,
): Promise<{ url: string; close(): void }> {
  const child = spawn(process.execPath, ['test/bench/sse-upstream.ts', String(chunks), String(gapMs)], {
    cwd: resolve(import.meta.dirname, '..', '..'),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const close = () => {
    if (child.exitCode === null) child.kill('SIGTERM');
  };
  // Not left listening when this process ends early (a failed start, an exception).
  process.on('exit', close);
  const url = await new Promise<string>((res, rej) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening (\d+)\n/.exec(out);
      if (m) res(`http://127.0.0.1:${m[1]}`);
    });
    child.once('exit', (code) => rej(new Error(`sse-upstream exited with ${code}`)));
  });
  return { url, close };
}

/** The fields of /proc/<pid>/stat after the command name ([1]: the parent's pid); null once it is gone. */
export function procStat(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** User + system CPU time in those fields, in microseconds (100 ticks/s). */
export const cpuUsOf = (fields: string[]): number => (Number(fields[11]) + Number(fields[12])) * 10_000;

/**
 * A reader of the user + system CPU time (µs) of a process and its direct children (nginx's master
 * and worker). The children are found at the first reading, so take it after the process has forked
 * them (after a warm-up); later readings only read their /proc/<pid>/stat.
 */
export function processTreeCpu(pid: number): () => number {
  let pids: number[] | null = null;
  return () => {
    pids ??= readdirSync('/proc')
      .filter((e) => /^\d+$/.test(e))
      .map(Number)
      .filter((p) => p === pid || Number(procStat(p)?.[1]) === pid);
    let us = 0;
    for (const p of pids) {
      const fields = procStat(p);
      if (fields) us += cpuUsOf(fields);
    }
    return us;
  };
}

/** Resolves once something accepts connections on 127.0.0.1:`port` (at most 10 s). */
export async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((r) => {
      const s = connect(port, '127.0.0.1', () => {
        s.end();
        r(true);
      });
      s.on('error', () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${port}`);
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
