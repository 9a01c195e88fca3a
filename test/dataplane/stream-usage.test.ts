// Exact token counts for streams the client did not ask usage for: the gateway asks the backend for
// the final usage chunk, meters it, and keeps it from the client.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { apiKey, backend, chat, MemorySink, snapshot, startPlane, tenant, until } from './harness.ts';

describe('stream usage', () => {
  let plane: DataPlane;
  let sim: Simulator;
  const sink = new MemorySink();
  const key = apiKey('acme');

  beforeAll(async () => {
    sim = await startSimulator({ models: ['sim-llama'], decodeMsPerToken: 1, prefillMsPerToken: 0 });
    plane = await startPlane({ usageSink: sink });
    plane.applySnapshot(
      snapshot({
        backends: [backend('ns/sim', [sim.url], { models: ['sim-llama'] })],
        tenants: [tenant('acme')],
        keys: [key.key],
      }),
    );
  });
  afterAll(async () => {
    await plane.close({ drainMs: 500 });
    await sim.close();
  });

  async function stream(requestId: string, extra: Record<string, unknown>): Promise<string> {
    const r = await request(plane.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat('sim-llama', { stream: true, max_tokens: 7, ...extra }),
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${key.secret}`,
        'x-request-id': requestId,
      },
    });
    expect(r.statusCode).toBe(200);
    return r.body.text();
  }

  it('meters exact tokens for a stream without include_usage and never shows the client the usage chunk', async () => {
    const text = await stream('su-1', {});
    expect(text).toContain('[DONE]');
    expect(text).not.toMatch(/"choices":\s*\[\]/);
    // Nor the "usage": null the backend puts in every token chunk once usage is asked for: the client
    // gets the stream a direct call without stream_options gives.
    expect(text).toContain('"delta"');
    expect(text).not.toContain('"usage"');
    await until(() => sink.events.some((e) => e.requestId === 'su-1'));
    const event = sink.events.find((e) => e.requestId === 'su-1')!;
    expect(event).toMatchObject({ outputTokens: 7, tokensEstimated: false });
    expect(event.inputTokens).toBeGreaterThan(0);
  });

  it('passes the usage chunk through to a client that asked for it', async () => {
    const text = await stream('su-2', { stream_options: { include_usage: true } });
    expect(text).toMatch(/"choices":\s*\[\]/);
    // The client asked: its token chunks keep the backend's "usage": null, untouched.
    expect(text).toMatch(/"usage":\s*null/);
    await until(() => sink.events.some((e) => e.requestId === 'su-2'));
    expect(sink.events.find((e) => e.requestId === 'su-2')).toMatchObject({
      outputTokens: 7,
      tokensEstimated: false,
    });
  });
});
