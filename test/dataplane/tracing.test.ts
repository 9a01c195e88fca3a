// Tracing: a client's W3C traceparent/tracestate reach the GPU simulator (forwarded untouched when
// tracing is off, continued by the gateway's upstream span when on), and spans for identify,
// routing, admission, upstream and metering are exported to a local OTLP/HTTP receiver.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { sampledFlag } from '../../dataplane/observability/tracing.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { startOtlpReceiver, type OtlpReceiver } from '../fixtures/otlp-receiver.ts';
import { apiKey, backend, chat, snapshot, startPlane, tenant, until } from './harness.ts';

const CLIENT_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const CLIENT_PARENT = '00f067aa0ba902b7';
const TRACEPARENT = `00-${CLIENT_TRACE}-${CLIENT_PARENT}-01`;

describe('tracing', () => {
  let sim: Simulator;
  let off: DataPlane;
  let on: DataPlane;
  let receiver: OtlpReceiver;
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
    await receiver.close();
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
    expect(receiver.exports.every((e) => e.path === '/v1/traces')).toBe(true);
    expect(receiver.exports[0]?.headers['content-type']).toContain('application/json');
  });
});

describe('tracing sampling', () => {
  let sim: Simulator;
  let plane: DataPlane;
  let receiver: OtlpReceiver;
  const key = apiKey('team/s');
  // The coin for requests without a client traceparent: 0.7 (not sampled at ratio 0.5), then 0.2 (sampled).
  const coins = [0.7, 0.2];
  let coinsAsked = 0;

  beforeAll(async () => {
    sim = await startSimulator({ models: ['sim-llama'], decodeMsPerToken: 0, outputTokens: 2 });
    receiver = await startOtlpReceiver();
    plane = await startPlane({
      tracing: {
        otlpEndpoint: receiver.url,
        exportDelayMs: 50,
        sampleRatio: 0.5,
        random: () => {
          coinsAsked++;
          return coins.shift() ?? 0.99;
        },
      },
    });
    plane.applySnapshot(
      snapshot({ backends: [backend('gpu/llama', [sim.url])], tenants: [tenant('team/s')], keys: [key.key] }),
    );
  });
  afterAll(async () => {
    await plane.close({ drainMs: 1000 });
    await sim.close();
    await receiver.close();
  });

  const send = async (requestId: string, traceparent?: string) => {
    const res = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      headers: {
        authorization: `Bearer ${key.secret}`,
        'content-type': 'application/json',
        'x-request-id': requestId,
        ...(traceparent ? { traceparent } : {}),
      },
      body: chat('sim-llama', { max_tokens: 2 }),
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    return sim.requests().find((r) => r.headers['x-request-id'] === requestId)!.headers;
  };
  const exported = (requestId: string) =>
    receiver.spans.some((s) =>
      s.attributes?.some((a) => a.key === 'gpugate.request_id' && a.value.stringValue === requestId),
    );

  it('decides before any span: the client’s flag is followed, other requests get the ratio’s coin, unsampled ones pass through', async () => {
    const unsampledClient = `00-${CLIENT_TRACE}-${CLIENT_PARENT}-00`;
    const sampledClient = `00-${'a'.repeat(32)}-${CLIENT_PARENT}-01`;
    // Coin 0.7 at ratio 0.5: not sampled, and no traceparent appears at the backend.
    expect((await send('sample-coin-no')).traceparent).toBeUndefined();
    // The client said "not sampled": forwarded untouched, no coin asked.
    expect((await send('sample-client-no', unsampledClient)).traceparent).toBe(unsampledClient);
    expect(coinsAsked).toBe(1);
    // Coin 0.2: sampled, the gateway's upstream span is the backend's parent.
    expect((await send('sample-coin-yes')).traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    // The client said "sampled": followed without a coin.
    const followed = (await send('sample-client-yes', sampledClient)).traceparent as string;
    expect(followed.startsWith(`00-${'a'.repeat(32)}-`)).toBe(true);
    expect(followed).not.toBe(sampledClient);
    expect(coinsAsked).toBe(2);
    await until(() => exported('sample-coin-yes') && exported('sample-client-yes'), 20_000);
    // Batches go out in order: the unsampled requests, sent earlier, would have been exported by now.
    expect(exported('sample-coin-no')).toBe(false);
    expect(exported('sample-client-no')).toBe(false);
  });

  it('reads the sampled flag of a W3C traceparent, and nothing from an invalid one', () => {
    expect(sampledFlag(`00-${CLIENT_TRACE}-${CLIENT_PARENT}-01`)).toBe(true);
    expect(sampledFlag(`00-${CLIENT_TRACE}-${CLIENT_PARENT}-00`)).toBe(false);
    expect(sampledFlag(`00-${CLIENT_TRACE}-${CLIENT_PARENT}-03`)).toBe(true);
    expect(sampledFlag(undefined)).toBeNull();
    expect(sampledFlag(`00-${'0'.repeat(32)}-${CLIENT_PARENT}-01`)).toBeNull();
    expect(sampledFlag(`00-${CLIENT_TRACE}-${'0'.repeat(16)}-01`)).toBeNull();
    expect(sampledFlag(`ff-${CLIENT_TRACE}-${CLIENT_PARENT}-01`)).toBeNull();
    expect(sampledFlag('garbage')).toBeNull();
  });
});
