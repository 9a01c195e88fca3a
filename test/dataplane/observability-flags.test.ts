// dataplane/main.ts's access-log and tracing settings, as a process: --otlp-endpoint turns tracing on
// (spans reach a local OTLP receiver with GPUGATE_OTLP_HEADERS, which never shows in the log),
// --access-log-sample 0 keeps refusals only, --access-log-level sets their level, GPUGATE_ACCESS_LOG=off
// turns the lines off, and a bad value stops the start naming the setting and what is allowed.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { startOtlpReceiver, type OtlpReceiver } from '../fixtures/otlp-receiver.ts';
import { startDataPlaneProcess, startProcess, type DataPlaneProcess } from '../fixtures/processes.ts';
import { apiKey, backend, chat, snapshot, tenant, until } from './harness.ts';

const TOKEN = 'flags-push-token';
const COLLECTOR_SECRET = 'collector-secret-0123456789';

async function send(url: string, requestId: string, secret: string): Promise<number> {
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${secret}`,
      'content-type': 'application/json',
      'x-request-id': requestId,
    },
    body: chat('m', { max_tokens: 2 }),
  });
  await res.body.dump();
  return res.statusCode;
}

async function features(adminUrl: string): Promise<Record<string, boolean>> {
  const res = await request(`${adminUrl}/admin/info`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return ((await res.body.json()) as { features: Record<string, boolean> }).features;
}

const accessLines = (p: DataPlaneProcess) =>
  p
    .log()
    .split('\n')
    .filter((l) => l.includes('"msg":"request"'))
    .map((l) => JSON.parse(l) as { level: number; access: { requestId: string; status: number } });

describe('access-log and tracing flags of dataplane/main.ts', () => {
  let dir: string;
  let sim: Simulator;
  let receiver: OtlpReceiver;
  let snapFile: string;
  const key = apiKey('acme');
  const planes: DataPlaneProcess[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gpugate-obs-flags-'));
    sim = await startSimulator({ host: '127.0.0.1', port: 0, models: ['m'], decodeMsPerToken: 0 });
    receiver = await startOtlpReceiver();
    snapFile = join(dir, 'snapshot.json');
    writeFileSync(
      snapFile,
      JSON.stringify(
        snapshot({ backends: [backend('ns/m', [sim.url])], tenants: [tenant('acme')], keys: [key.key] }),
      ),
    );
  });
  afterAll(async () => {
    await Promise.all(planes.map((p) => p.kill()));
    await receiver.close();
    await sim.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('exports spans to --otlp-endpoint with the collector headers, and samples the access log', async () => {
    const plane = await startDataPlaneProcess({
      token: TOKEN,
      args: [
        '--snapshot',
        snapFile,
        '--otlp-endpoint',
        receiver.url,
        '--trace-sample',
        '1',
        '--access-log-sample',
        '0',
        '--access-log-level',
        'warn',
      ],
      env: { GPUGATE_OTLP_HEADERS: `x-collector-token=${COLLECTOR_SECRET}` },
      ready: 'snapshot applied',
    });
    planes.push(plane);
    expect(await features(plane.adminUrl)).toMatchObject({ tracing: true, accessLog: true });
    expect(await send(plane.url, 'flags-ok-1', key.secret)).toBe(200);
    expect(await send(plane.url, 'flags-refused-1', 'sk-not-a-key')).toBe(401);

    await until(
      () =>
        receiver.spans.some(
          (s) =>
            s.name === 'gpugate.request' &&
            s.attributes?.some((a) => a.key === 'gpugate.request_id' && a.value.stringValue === 'flags-ok-1'),
        ),
      20_000,
    );
    expect(receiver.exports[0]?.headers['x-collector-token']).toBe(COLLECTOR_SECRET);
    // Sampling 0 drops successful requests' lines only; the refusal is logged, at the level asked for.
    await until(() => accessLines(plane).length > 0, 10_000);
    const lines = accessLines(plane);
    expect(lines.map((l) => [l.access.requestId, l.access.status, l.level])).toEqual([
      ['flags-refused-1', 401, 40],
    ]);
    expect(plane.log()).not.toContain(COLLECTOR_SECRET);
    expect(plane.log()).not.toContain(key.secret);
  });

  it('turns the access log off with GPUGATE_ACCESS_LOG=off, tracing staying off without an endpoint', async () => {
    const plane = await startDataPlaneProcess({
      token: TOKEN,
      args: ['--snapshot', snapFile],
      env: { GPUGATE_ACCESS_LOG: 'off' },
      ready: 'snapshot applied',
    });
    planes.push(plane);
    expect(await features(plane.adminUrl)).toMatchObject({ tracing: false, accessLog: false });
    expect(await send(plane.url, 'flags-off-1', 'sk-not-a-key')).toBe(401);
    expect(await send(plane.url, 'flags-off-2', key.secret)).toBe(200);
    expect(accessLines(plane)).toEqual([]);
  });

  it.each([
    [
      ['--access-log-sample', '2'],
      {},
      '--access-log-sample must be a number from 0 to 1 (e.g. 0.1 keeps one in ten), got "2"',
    ],
    [['--access-log', 'yes'], {}, '--access-log must be on or off, got "yes"'],
    [
      [],
      { GPUGATE_ACCESS_LOG_LEVEL: 'loud' },
      'GPUGATE_ACCESS_LOG_LEVEL must be one of trace, debug, info, warn, error, fatal, got "loud"',
    ],
    [
      ['--otlp-endpoint', 'collector:4318'],
      {},
      '--otlp-endpoint must be an http(s) URL such as http://otel-collector:4318/v1/traces, got "collector:4318"',
    ],
    [
      ['--trace-sample', '0.5'],
      {},
      '--trace-sample (GPUGATE_TRACE_SAMPLE) needs --otlp-endpoint (GPUGATE_OTLP_ENDPOINT): tracing is off without a collector',
    ],
    [
      ['--otlp-endpoint', 'http://127.0.0.1:4318/v1/traces'],
      { GPUGATE_OTLP_HEADERS: `authorization:${COLLECTOR_SECRET}` },
      'GPUGATE_OTLP_HEADERS must be name=value pairs separated by commas; one entry has no "="',
    ],
  ] as [string[], Record<string, string>, string][])('refuses %j %j at start', async (args, env, message) => {
    const p = startProcess(
      'dataplane/main.ts',
      ['--host', '127.0.0.1', '--port', '0', '--admin-host', '127.0.0.1', '--admin-port', '0', ...args],
      { GPUGATE_PUSH_TOKEN: TOKEN, ...env },
    );
    try {
      expect(await p.exited).toBe(2);
      const fatal = p
        .log()
        .split('\n')
        .find((l) => l.includes('"level":60'));
      expect(JSON.parse(fatal!).msg).toBe(message);
      expect(p.log()).not.toContain(COLLECTOR_SECRET);
    } finally {
      await p.kill('SIGKILL');
    }
  });
});
