// What createDataPlane exports on /metrics without any extra wiring by the caller: per-tenant usage
// counters (countUsage around the sink), endpoints by state, in-flight requests per backend, rate-limit
// rejections by tenant and limit, metering drops at zero; and PUT /config's single-parse refusals.
import type { ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { Registry } from 'prom-client';
import pg from 'pg';
import { createMeteringWriter } from '../../dataplane/metering/writer.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import {
  apiKey,
  backend,
  chat,
  MemorySink,
  quietLogger,
  snapshot,
  startPlane,
  startUpstream,
  tenant,
  until,
  type Upstream,
} from './harness.ts';

describe('data-plane metrics wiring', () => {
  let plane: DataPlane;
  let up: Upstream;
  let held: ServerResponse[] | null = null;
  const sink = new MemorySink();
  const open = apiKey('team/open');
  const limited = apiKey('team/limited');

  beforeAll(async () => {
    up = await startUpstream('up', (_req, res) => {
      if (held) {
        held.push(res);
        return;
      }
      const payload = JSON.stringify({
        id: 'x',
        choices: [],
        usage: { prompt_tokens: 4, completion_tokens: 6 },
      });
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(payload),
      });
      res.end(payload);
    });
    plane = await startPlane({ usageSink: sink });
    const r = plane.applySnapshot(
      snapshot({
        backends: [
          backend('ns/llm', [up.url], { pricing: { perRequest: 1, perInputToken: 0, perOutputToken: 0 } }),
        ],
        tenants: [tenant('team/open'), tenant('team/limited', { limits: { requestsPerMinute: 1 } })],
        keys: [open.key, limited.key],
      }),
    );
    expect(r.accepted).toBe(true);
  });

  afterAll(async () => {
    for (const res of held ?? []) res.destroy();
    await plane.close({ drainMs: 0 });
    await up.close();
  });

  async function call(secret: string): Promise<number> {
    const res = await request(`${plane.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
      body: chat('m'),
    });
    await res.body.dump();
    return res.statusCode;
  }

  async function metrics(): Promise<string> {
    const res = await request(plane.adminUrl + '/metrics');
    return res.body.text();
  }

  it('counts usage per tenant and model while still handing every event to the sink', async () => {
    expect(await call(open.secret)).toBe(200);
    const text = await metrics();
    expect(text).toContain(
      'gpugate_usage_requests_total{tenant="team/open",backend="ns/llm",route="/v1",code_class="2xx"} 1',
    );
    expect(text).toContain(
      'gpugate_usage_tokens_total{tenant="team/open",backend="ns/llm",model="m",kind="output"} 6',
    );
    expect(text).toContain('gpugate_usage_credits_total{tenant="team/open",backend="ns/llm",model="m"} 1');
    expect(text).toMatch(/gpugate_proxy_time_to_first_byte_seconds_count\{backend="ns\/llm"\} 1/);
    expect(sink.events.filter((e) => e.tenant === 'team/open')).toHaveLength(1);
  });

  it('exports endpoints by state and in-flight requests per backend', async () => {
    let text = await metrics();
    expect(text).toContain('gpugate_upstream_endpoints{backend="ns/llm",state="healthy"} 1');
    expect(text).toContain('gpugate_upstream_endpoints{backend="ns/llm",state="unhealthy"} 0');
    expect(text).toContain('gpugate_upstream_inflight_requests{backend="ns/llm"} 0');
    held = [];
    const pending = call(open.secret);
    await until(() => held!.length === 1);
    text = await metrics();
    expect(text).toContain('gpugate_upstream_inflight_requests{backend="ns/llm"} 1');
    const res = held[0]!;
    held = null;
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 2 });
    res.end('{}');
    expect(await pending).toBe(200);
  });

  it('counts rate-limit rejections by tenant and limit', async () => {
    expect(await call(limited.secret)).toBe(200);
    expect(await call(limited.secret)).toBe(429);
    expect(await metrics()).toContain(
      'gpugate_admission_rejections_total{tenant="team/limited",reason="requests_per_minute"} 1',
    );
  });

  it('refuses a snapshot with an unparsable endpoint URL (400 problems) and an older one (stale) in one parse', async () => {
    const current = plane.revision();
    const bad = snapshot({ backends: [backend('ns/bad', ['http://[broken'])] });
    expect(plane.applySnapshot(bad)).toEqual({
      accepted: false,
      stale: false,
      problems: [
        { path: '/backends/0/endpoints/0/url', message: 'endpoint URL "http://[broken" is not a valid URL' },
      ],
    });
    const older = snapshot({ backends: [backend('ns/old', [up.url])], generatedAt: '2020-01-01T00:00:00Z' });
    expect(plane.applySnapshot(older)).toMatchObject({ accepted: false, stale: true });
    expect(plane.revision()).toBe(current);
    expect(await metrics()).toContain('gpugate_config_snapshot_applies_total{result="refused"} 2');
  });
});

describe('metering writer metrics', () => {
  it('exports the dropped-events counter at zero for each reason before any drop', async () => {
    const registry = new Registry();
    // Never connects: the writer only needs a pool object to exist until it flushes.
    const pool = new pg.Pool({ connectionString: 'postgres://nobody@127.0.0.1:9/none', max: 1 });
    const writer = createMeteringWriter({ pool, registry, logger: quietLogger, flushIntervalMs: 60_000 });
    const text = await registry.metrics();
    expect(text).toContain('gpugate_metering_dropped_events_total{reason="buffer_full"} 0');
    expect(text).toContain('gpugate_metering_dropped_events_total{reason="closed"} 0');
    await writer.flushAndClose(100).catch(() => undefined);
    await pool.end();
  });
});

describe('in-flight requests across a snapshot swap', () => {
  it('still counts a request whose backend the new snapshot removed, until it ends', async () => {
    const held: ServerResponse[] = [];
    const up = await startUpstream('slow', (_req, res) => held.push(res));
    const plane = await startPlane();
    const key = apiKey('team/a');
    const parts = { tenants: [tenant('team/a')], keys: [key.key] };
    try {
      plane.applySnapshot(snapshot({ backends: [backend('ns/old', [up.url])], ...parts }));
      const pending = request(`${plane.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key.secret}` },
        body: chat('m'),
      });
      await until(() => held.length === 1);
      plane.applySnapshot(snapshot({ backends: [backend('ns/new', [up.url])], ...parts }));
      const gauge = async () =>
        (await (await request(plane.adminUrl + '/metrics')).body.text())
          .split('\n')
          .filter((l) => l.startsWith('gpugate_upstream_inflight_requests{'));
      expect((await gauge()).sort()).toEqual([
        'gpugate_upstream_inflight_requests{backend="ns/new"} 0',
        'gpugate_upstream_inflight_requests{backend="ns/old"} 1',
      ]);
      held[0]!.writeHead(200, { 'content-type': 'application/json', 'content-length': 2 });
      held[0]!.end('{}');
      const res = await pending;
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      // The replaced runtime retires once its last request ended; its endpoints go with it.
      let lines = await gauge();
      for (let i = 0; i < 200 && lines.some((l) => l.includes('ns/old')); i++) {
        await new Promise((r) => setTimeout(r, 10));
        lines = await gauge();
      }
      expect(lines).toEqual(['gpugate_upstream_inflight_requests{backend="ns/new"} 0']);
    } finally {
      for (const r of held) r.destroy();
      await plane.close({ drainMs: 0 });
      await up.close();
    }
  });
});
