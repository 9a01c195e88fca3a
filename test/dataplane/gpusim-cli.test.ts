// The simulator CLI as a process, the way fault tests start endpoints they can kill: it prints its URL,
// serves, refuses bad flags with a message naming them, and exits cleanly on SIGTERM.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { request } from 'undici';

const MAIN = fileURLToPath(new URL('../fixtures/gpusim/main.ts', import.meta.url));

function startCli(args: string[]) {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const url = new Promise<string>((resolve, reject) => {
    child.stdout.on('data', () => {
      const m = /listening on (http:\/\/\S+)/.exec(stdout);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`gpusim exited with ${code}: ${stderr}`)));
  });
  const exited = once(child, 'exit') as Promise<[number | null, string | null]>;
  return { child, url, exited, output: () => ({ stdout, stderr }) };
}

describe('gpusim CLI', () => {
  it('prints its URL, serves the API and exits with 0 on SIGTERM', async () => {
    const cli = startCli([
      '--port',
      '0',
      '--name',
      'cli-sim',
      '--models',
      'a,b',
      '--decode-ms-per-token',
      '0',
    ]);
    const url = await cli.url;
    const res = await request(url + '/v1/completions', {
      method: 'POST',
      body: JSON.stringify({ model: 'b', prompt: 'hi', max_tokens: 2 }),
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-sim-name']).toBe('cli-sim');
    expect(
      ((await res.body.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens,
    ).toBe(2);
    cli.child.kill('SIGTERM');
    const [code] = await cli.exited;
    expect(code).toBe(0);
  });

  it('refuses a bad flag value with the flag, the value and what is allowed', async () => {
    const cli = startCli(['--batch-slowdown=-1']);
    await expect(cli.url).rejects.toThrow();
    const [code] = await cli.exited;
    expect(code).toBe(2);
    expect(cli.output().stderr).toContain('--batch-slowdown must be a number >= 0, got "-1"');
  });
});
