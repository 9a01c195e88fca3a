// Access log: one line per request with identifiers, routing facts, durations and the admission
// decision; the API key never appears in it; the same request id reaches the backend; sampling
// thins successes but never refusals.
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import type { AccessLogEntry } from '../../dataplane/observability/access-log.ts';
import {
  apiKey,
  backend,
  chat,
  snapshot,
  startPlane,
  startUpstream,
  tenant,
  until,
  type Upstream,
} from './harness.ts';

function capture(): { logger: pino.Logger; text: () => string; lines: () => AccessLogEntry[] } {
  let text = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      text += chunk.toString('utf8');
      done();
    },
  });
  const logger = pino({ level: 'info' }, sink);
  return {
    logger,
    text: () => text,
    lines: () =>
      text
        .split('\n')
        .filter((l) => l.includes('"access"'))
        .map((l) => (JSON.parse(l) as { access: AccessLogEntry }).access),
  };
}

describe('access log', () => {
  let up: Upstream;
  let plane: DataPlane;
  let sampled: DataPlane;
  const log = capture();
  const sampledLog = capture();
  const key = apiKey('team/a');
  const limited = apiKey('team/b');

  beforeAll(async () => {
    up = await startUpstream('a');
    plane = await startPlane({ logger: log.logger });
    sampled = await startPlane({ logger: sampledLog.logger, accessLog: { sampleRate: 0 } });
    const snap = snapshot({
      backends: [backend('gpu/llama', [up.url])],
      tenants: [tenant('team/a'), tenant('team/b', { limits: { requestsPerMinute: 1 } })],
      keys: [key.key, limited.key],
    });
    expect(plane.applySnapshot(snap).accepted).toBe(true);
    expect(sampled.applySnapshot(snap).accepted).toBe(true);
  });
  afterAll(async () => {
    await plane.close({ drainMs: 1000 });
    await sampled.close({ drainMs: 1000 });
    await up.close();
  });

  const post = (target: DataPlane, secret: string, headers: Record<string, string> = {}) =>
    request(target.url + '/v1/chat/completions?api_key=' + secret, {
      method: 'POST',
      headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json', ...headers },
      body: chat('llama-3', { user_secret_note: 'body text never logged' }),
    });

  it('writes one line per request with ids, routing, sizes, durations and no credential or body', async () => {
    const res = await post(plane, key.secret, {
      'x-request-id': 'req-access-1',
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    // The line is written when the response closes on the server side.
    await until(() => log.lines().some((l) => l.requestId === 'req-access-1'));
    const lines = log.lines().filter((l) => l.requestId === 'req-access-1');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      method: 'POST',
      path: '/v1/chat/completions',
      status: 200,
      tenant: 'team/a',
      keyPrefix: key.key.prefix,
      backend: 'gpu/llama',
      endpoint: 'ep0',
      model: 'llama-3',
      retries: 0,
      limits: 'admitted',
      error: null,
      traceId: '0af7651916cd43dd8448eb211c80319c',
    });
    expect(lines[0]?.bytesIn).toBeGreaterThan(0);
    expect(lines[0]?.bytesOut).toBeGreaterThan(0);
    expect(lines[0]?.ttfbMs).not.toBeNull();
    expect(lines[0]?.durationMs).toBeGreaterThanOrEqual(lines[0]?.ttfbMs ?? 0);
    // The same request id reached the backend.
    expect(up.requests.at(-1)?.headers['x-request-id']).toBe('req-access-1');
    // Grep the whole captured log: no key, no hash, no body.
    const all = log.text();
    expect(all).not.toContain(key.secret);
    expect(all).not.toContain(key.key.sha256);
    expect(all).not.toContain('body text never logged');
    expect(all).not.toContain('api_key');
  });

  it('logs a rate-limit refusal with its code even when successes are sampled away', async () => {
    for (let i = 0; i < 3; i++) {
      const res = await post(sampled, limited.secret);
      await res.body.dump();
    }
    await until(() => sampledLog.lines().some((l) => l.status === 429));
    const lines = sampledLog.lines();
    expect(lines.every((l) => l.status === 429)).toBe(true);
    expect(lines.length).toBeGreaterThanOrEqual(1);
    expect(lines[0]).toMatchObject({
      tenant: 'team/b',
      keyPrefix: limited.key.prefix,
      limits: 'rate_limit_exceeded',
    });
    expect(sampledLog.text()).not.toContain(limited.secret);
  });
});
