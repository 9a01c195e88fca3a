// The data plane's memory under large uploads, as a process started the way the image starts it
// (node <dataplane/node-flags.ts> dataplane/main.ts): every body chunk it reads is a fresh buffer
// outside the JavaScript heap, and its resident set must not climb with the bytes streamed through it
// (issue #4: at most 64 MiB of growth for a 100 MiB upload). Without the flags, V8 frees those buffers
// only at a full GC after about 64 MiB of them, and these uploads grew it by 75–100 MiB
// (docs/benchmarks.md). The growth is read from /proc (the peak resident set, VmHWM, reset before each
// case through clear_refs), so it is a property of the bytes streamed, not of timing.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { repeatedBody } from '../fixtures/bodies.ts';
import { startDataPlaneProcess, type DataPlaneProcess } from '../fixtures/processes.ts';
import { apiKey, backend, snapshot, startUpstream, tenant, type Upstream } from './harness.ts';

const MiB = 1024 * 1024;
/** The goal for the data plane's growth. */
const GOAL = 64 * MiB;

/** VmRSS and VmHWM of a process, in bytes. */
function memory(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(status);
    if (!m) throw new Error(`/proc/${pid}/status has no ${name}`);
    return Number(m[1]) * 1024;
  };
  return { rss: kb('VmRSS'), peak: kb('VmHWM') };
}

/** A body of `bytes` in 64 KiB chunks, generated as it is read. */
const body = (bytes: number) => repeatedBody(Buffer.alloc(64 * 1024, 0x5a), bytes);

describe('data-plane memory under large uploads (a process with the image flags)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gpugate-upload-memory-'));
  const key = apiKey('acme');
  const snapFile = join(dir, 'snapshot.json');
  let up: Upstream;

  beforeAll(async () => {
    up = await startUpstream('sink', undefined, { keepBody: false });
    writeFileSync(
      snapFile,
      JSON.stringify(
        snapshot({
          backends: [backend('ns/images', [up.url], { maxRequestBytes: 1024 * MiB })],
          tenants: [tenant('acme')],
          keys: [key.key],
        }),
      ),
    );
  });

  afterAll(async () => {
    await up?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function upload(plane: DataPlaneProcess, bytes: number): Promise<void> {
    const res = await request(plane.url + '/v1/uploads', {
      method: 'POST',
      body: body(bytes),
      headers: {
        'content-type': 'application/octet-stream',
        'content-length': String(bytes),
        authorization: `Bearer ${key.secret}`,
      },
    });
    const answer = (await res.body.json()) as { receivedBytes: number };
    expect(res.statusCode).toBe(200);
    expect(answer.receivedBytes).toBe(bytes);
  }

  /**
   * Peak resident-set growth of a new data-plane process while `run` streams bodies through it, from
   * its resident set after start-up and one small upload. A new process each time: memory that an
   * earlier upload left with the allocator would be reused and hide the growth.
   */
  async function growth(run: (plane: DataPlaneProcess) => Promise<unknown>): Promise<number> {
    const plane = await startDataPlaneProcess({ args: ['--snapshot', snapFile], ready: 'snapshot applied' });
    try {
      const pid = plane.child.pid as number;
      await upload(plane, 64 * 1024);
      // "5": reset the peak resident set (VmHWM) to the current one (proc(5), Linux 4.0+).
      writeFileSync(`/proc/${pid}/clear_refs`, '5');
      const before = memory(pid).rss;
      await run(plane);
      return memory(pid).peak - before;
    } finally {
      await plane.kill();
    }
  }

  it('grows by at most 64 MiB while one 256 MiB upload streams through it', async () => {
    const grown = await growth((plane) => upload(plane, 256 * MiB));
    expect(grown, `grew by ${(grown / MiB).toFixed(1)} MiB`).toBeLessThanOrEqual(GOAL);
  });

  it('grows by at most 64 MiB while 8 uploads of 64 MiB stream through it at once', async () => {
    const grown = await growth((plane) =>
      Promise.all(Array.from({ length: 8 }, () => upload(plane, 64 * MiB))),
    );
    expect(grown, `grew by ${(grown / MiB).toFixed(1)} MiB`).toBeLessThanOrEqual(GOAL);
  });
});
