import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import type { UsageEvent } from '../../dataplane/metering/usage.ts';
import { countUsage, createMetrics } from '../../dataplane/metrics/metrics.ts';

const event = (over: Partial<UsageEvent> = {}): UsageEvent => ({
  requestId: 'r1',
  time: 0,
  tenant: 'default/research',
  keyId: 'default/k',
  userId: null,
  backend: 'default/llama',
  endpoint: 'http://127.0.0.1:1',
  route: '/v1',
  model: 'm',
  status: 200,
  inputTokens: 10,
  outputTokens: 5,
  tokensEstimated: false,
  bytesIn: 1,
  bytesOut: 1,
  durationMs: 100,
  ttfbMs: 20,
  credits: 2.5,
  ...over,
});

describe('usage metrics', () => {
  it('counts requests, tokens, credits by tenant and TTFB by backend, and passes events on', async () => {
    const registry = new Registry();
    const seen: UsageEvent[] = [];
    const sink = countUsage(registry, { record: (e) => seen.push(e) });
    sink.record(event());
    sink.record(event({ status: 503, inputTokens: 0, outputTokens: 0, credits: 0, ttfbMs: null }));
    const text = await registry.metrics();
    expect(seen).toHaveLength(2);
    expect(text).toContain(
      'gpugate_usage_requests_total{tenant="default/research",backend="default/llama",route="/v1",code_class="2xx"} 1',
    );
    expect(text).toContain('code_class="5xx"} 1');
    expect(text).toContain(
      'gpugate_usage_tokens_total{tenant="default/research",backend="default/llama",model="m",kind="output"} 5',
    );
    expect(text).toContain(
      'gpugate_usage_credits_total{tenant="default/research",backend="default/llama",model="m"} 2.5',
    );
    expect(text).toContain('gpugate_proxy_time_to_first_byte_seconds_count{backend="default/llama"} 1');
  });

  it('keeps the model label bounded: models past the 64th count as "other"', async () => {
    const registry = new Registry();
    const sink = countUsage(registry, null);
    for (let i = 0; i < 70; i++) sink.record(event({ model: `client-chosen-${i}` }));
    const text = await registry.metrics();
    expect(text.match(/^gpugate_usage_credits_total\{/gm)).toHaveLength(65);
    expect(text).toContain('model="other"} 15');
  });

  it('exports endpoint health with zeros, so a backend without healthy endpoints is a sample', async () => {
    const registry = new Registry();
    createMetrics(registry, {
      snapshotAgeMs: () => null,
      queueDepths: () => [],
      endpointHealth: () => [
        { backend: 'b', health: 'unhealthy' },
        { backend: 'b', health: 'not_ready' },
      ],
    });
    const text = await registry.metrics();
    expect(text).toContain('gpugate_upstream_endpoints{backend="b",state="healthy"} 0');
    expect(text).toContain('gpugate_upstream_endpoints{backend="b",state="unhealthy"} 1');
  });
});
