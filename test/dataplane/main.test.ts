// dataplane/main.ts as a process: flags, the initial snapshot file, the push token from a file, and
// SIGTERM draining a request in flight before exiting 0.
import { spawn } from 'node:child_process';
import type { ServerResponse } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { apiKey, backend, chat, snapshot, startUpstream, tenant, until } from './harness.ts';

const root = resolve(import.meta.dirname, '..', '..');

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
    const child = spawn(
      process.execPath,
      [
        'dataplane/main.ts',
        '--host',
        '127.0.0.1',
        '--port',
        '0',
        '--admin-host',
        '127.0.0.1',
        '--admin-port',
        '0',
        '--snapshot',
        snapFile,
        '--push-token-file',
        tokenFile,
        '--drain-ms',
        '20000',
      ],
      { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LOG_LEVEL: 'info' } },
    );
    let log = '';
    child.stdout.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr.on('data', (d: Buffer) => (log += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      await until(() => log.includes('"msg":"snapshot applied"'), 20_000);
      const listening = JSON.parse(
        log.split('\n').find((l) => l.includes('"msg":"data plane listening"')) ?? '{}',
      ) as { url: string; adminUrl: string };

      const badPush = await request(listening.adminUrl + '/config', {
        method: 'PUT',
        body: '{}',
        headers: { 'content-type': 'application/json', authorization: 'Bearer nope' },
      });
      expect(badPush.statusCode).toBe(401);
      await badPush.body.dump();
      const push = await request(listening.adminUrl + '/config', {
        method: 'PUT',
        body: '{}',
        headers: { 'content-type': 'application/json', authorization: 'Bearer file-token' },
      });
      expect(push.statusCode).toBe(400);
      await push.body.dump();

      const inflight = request(listening.url + '/v1/chat/completions', {
        method: 'POST',
        body: chat('m'),
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key.secret}` },
      });
      await until(() => held.length === 1);
      child.kill('SIGTERM');
      await until(() => log.includes('draining in-flight requests'));
      expect(child.exitCode).toBeNull();
      held[0]!.writeHead(200, { 'content-type': 'application/json' });
      held[0]!.end('{"drained":true}');
      const res = await inflight;
      expect(res.statusCode).toBe(200);
      expect(await res.body.json()).toEqual({ drained: true });
      expect(await exited).toBe(0);
      // Drained because the request ended, not because the deadline cut it.
      expect(log).not.toContain('drain deadline reached');
      expect(log).not.toContain(key.secret);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await up.close();
    }
  });
});
