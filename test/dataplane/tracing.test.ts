// Tracing: a client's W3C traceparent/tracestate reach the GPU simulator (forwarded untouched when
// tracing is off, continued by the gateway's upstream span when on), and spans for identify,
// routing, admission, upstream and metering are exported to a local OTLP/HTTP receiver.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { apiKey, backend, chat, snapshot, startPlane, tenant, until } from './harness.ts';

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  attributes?: { key: string; value: Record<string, unknown> }[];
}

/** A loopback OTLP/HTTP receiver that decodes the JSON encoding the exporter sends. */
async function startOtlpReceiver(): Promise<{ url: string; spans: OtlpSpan[]; server: Server }> {
  const spans: OtlpSpan[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let body = Buffer.concat(chunks);
      if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
      expect(req.url).toBe('/v1/traces');
      expect(req.headers['content-type']).toContain('application/json');
      const doc = JSON.parse(body.toString('utf8')) as {
        resourceSpans: { scopeSpans: { spans: OtlpSpan[] }[] }[];
      };
      for (const rs of doc.resourceSpans) for (const ss of rs.scopeSpans) spans.push(...ss.spans);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`, spans, server };
}

const CLIENT_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const CLIENT_PARENT = '00f067aa0ba902b7';
const TRACEPARENT = `00-${CLIENT_TRACE}-${CLIENT_PARENT}-01`;

describe('tracing', () => {
  let sim: Simulator;
  let off: DataPlane;
  let on: DataPlane;
  let receiver: Awaited<ReturnType<typeof startOtlpReceiver>>;
  const key = apiKey('team/a');

  beforeAll(async () => {
    sim = await startSimulator({ models: ['sim-llama'], decodeMsPerToken: 0, outputTokens: 2 });
    receiver = await startOtlpReceiver();
    off = await startPlane();
    on = await startPlane({ tracing: { otlpEndpoint: receiver.url, exportDelayMs: 50 } });
    const snap = snapshot({
      backends: [backend('gpu/llama', [sim.url])],
      tenants: [tenant('team/a')],
      keys: [key.key],
    });
    expect(off.applySnapshot(snap).accepted).toBe(true);
    expect(on.applySnapshot(snap).accepted).toBe(true);
  });
  afterAll(async () => {
    await off.close({ drainMs: 1000 });
    await on.close({ drainMs: 1000 });
    await sim.close();
    receiver.server.closeAllConnections();
    await new Promise<void>((r) => receiver.server.close(() => r()));
  });

  const complete = async (plane: DataPlane, requestId: string) => {
    const res = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      headers: {
        authorization: `Bearer ${key.secret}`,
        'content-type': 'application/json',
        'x-request-id': requestId,
        traceparent: TRACEPARENT,
        tracestate: 'vendor=abc',
      },
      body: chat('sim-llama', { max_tokens: 2 }),
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    const seen = sim.requests().find((r) => r.headers['x-request-id'] === requestId);
    expect(seen).toBeDefined();
    return seen!.headers;
  };

  it('forwards the client’s traceparent and tracestate untouched when tracing is off', async () => {
    const headers = await complete(off, 'trace-off-1');
    expect(headers.traceparent).toBe(TRACEPARENT);
    expect(headers.tracestate).toBe('vendor=abc');
  });

  it('continues the client’s trace to the simulator and exports the request’s spans over OTLP', async () => {
    const headers = await complete(on, 'trace-on-1');
    const sent = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/.exec(String(headers.traceparent));
    expect(sent?.[1]).toBe(CLIENT_TRACE); // same trace
    expect(sent?.[2]).not.toBe(CLIENT_PARENT); // a new parent: the gateway's upstream span
    expect(headers.tracestate).toBe('vendor=abc');

    const names = [
      'gpugate.request',
      'gpugate.identify',
      'gpugate.routing',
      'gpugate.admission',
      'gpugate.upstream',
      'gpugate.metering',
    ];
    await until(
      () => names.every((n) => receiver.spans.some((s) => s.traceId === CLIENT_TRACE && s.name === n)),
      20_000,
    );
    const ofTrace = receiver.spans.filter((s) => s.traceId === CLIENT_TRACE);
    const root = ofTrace.find((s) => s.name === 'gpugate.request')!;
    expect(root.parentSpanId).toBe(CLIENT_PARENT);
    for (const child of ofTrace.filter((s) => s.name !== 'gpugate.request'))
      expect(child.parentSpanId).toBe(root.spanId);
    const upstream = ofTrace.find((s) => s.name === 'gpugate.upstream')!;
    expect(upstream.spanId).toBe(sent?.[2]); // the simulator's parent is the exported upstream span
    const attrs = Object.fromEntries((root.attributes ?? []).map((a) => [a.key, Object.values(a.value)[0]]));
    expect(attrs).toMatchObject({
      'gpugate.tenant': 'team/a',
      'gpugate.backend': 'gpu/llama',
      'gpugate.request_id': 'trace-on-1',
    });
    expect(JSON.stringify(receiver.spans)).not.toContain(key.secret);
  });
});
