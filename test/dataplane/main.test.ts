// dataplane/main.ts as a process: flags, the initial snapshot file, the push token from a file, and
// SIGTERM draining a request in flight before exiting 0.
import type { ServerResponse } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { startDataPlaneProcess, type DataPlaneProcess } from '../fixtures/processes.ts';
import { apiKey, backend, chat, snapshot, startUpstream, tenant, until } from './harness.ts';

describe('dataplane/main.ts', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gpugate-main-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('serves the --snapshot file, takes the push token from a file, and drains a request in flight on SIGTERM', async () => {
    const held: ServerResponse[] = [];
    const up = await startUpstream('slow', (_req, res) => held.push(res));
    const key = apiKey('acme');
    const snapFile = join(dir, 'snapshot.json');
    writeFileSync(
      snapFile,
      JSON.stringify(
        snapshot({ backends: [backend('ns/slow', [up.url])], tenants: [tenant('acme')], keys: [key.key] }),
      ),
    );
    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, 'file-token\n');
    let plane: DataPlaneProcess | undefined;
    try {
      plane = await startDataPlaneProcess({
        args: ['--snapshot', snapFile, '--push-token-file', tokenFile],
        drainMs: 20000,
        ready: 'snapshot applied',
      });

      const badPush = await request(plane.adminUrl + '/config', {
        method: 'PUT',
        body: '{}',
        headers: { 'content-type': 'application/json', authorization: 'Bearer nope' },
      });
      expect(badPush.statusCode).toBe(401);
      await badPush.body.dump();
      const push = await request(plane.adminUrl + '/config', {
        method: 'PUT',
        body: '{}',
        headers: { 'content-type': 'application/json', authorization: 'Bearer file-token' },
      });
      expect(push.statusCode).toBe(400);
      await push.body.dump();

      const inflight = request(plane.url + '/v1/chat/completions', {
        method: 'POST',
        body: chat('m'),
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key.secret}` },
      });
      await until(() => held.length === 1);
      plane.child.kill('SIGTERM');
      await until(() => plane!.log().includes('draining in-flight requests'));
      expect(plane.child.exitCode).toBeNull();
      held[0]!.writeHead(200, { 'content-type': 'application/json' });
      held[0]!.end('{"drained":true}');
      const res = await inflight;
      expect(res.statusCode).toBe(200);
      expect(await res.body.json()).toEqual({ drained: true });
      expect(await plane.exited).toBe(0);
      // Drained because the request ended, not because the deadline cut it.
      expect(plane.log()).not.toContain('drain deadline reached');
      expect(plane.log()).not.toContain(key.secret);
    } finally {
      await plane?.kill('SIGKILL');
      await up.close();
    }
  });
});
