// Gateway chains: a gpugate upstream is recognised by its version header, and a request that comes
// back to a gateway it already passed is refused with 508 instead of looping.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import {
  apiKey,
  backend,
  chat,
  snapshot,
  startPlane,
  startUpstream,
  tenant,
  type Upstream,
} from './harness.ts';

describe('gateway chains', () => {
  let edge: DataPlane;
  let inner: DataPlane;
  let model: Upstream;
  const edgeKey = apiKey('acme');
  const innerKey = apiKey('edge');

  beforeAll(async () => {
    model = await startUpstream('model');
    inner = await startPlane();
    edge = await startPlane();
    inner.applySnapshot(
      snapshot({
        backends: [backend('ns/model', [model.url], { models: ['m'] })],
        tenants: [tenant('edge')],
        keys: [innerKey.key],
      }),
    );
    edge.applySnapshot(
      snapshot({
        backends: [
          backend('ns/regional', [inner.url], {
            models: ['m'],
            // The inner gateway wants its own key: the edge adds it; the client's never leaves the edge.
            upstreamAuth: { header: 'authorization', value: `Bearer ${innerKey.secret}` },
          }),
          backend('ns/loop', [], { models: ['loop'] }),
        ],
        tenants: [tenant('acme')],
        keys: [edgeKey.key],
      }),
    );
  });

  afterAll(async () => {
    await edge.close({ drainMs: 500 });
    await inner.close({ drainMs: 500 });
    await model.close();
  });

  it('forwards through a second gpugate and reports that endpoint as a gateway', async () => {
    const r = await request(edge.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat('m'),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${edgeKey.secret}` },
    });
    expect(r.statusCode).toBe(200);
    expect(((await r.body.json()) as { upstream: string }).upstream).toBe('model');
    expect(r.headers.via).toBe('1.1 gpugate, 1.1 gpugate');
    expect(model.requests.at(-1)?.headers.via).toBe(
      `1.1 gpugate (${edge.instanceId}), 1.1 gpugate (${inner.instanceId})`,
    );
    expect(model.requests.at(-1)?.headers['x-gpugate-tenant']).toBe('edge');
    const status = (await (await request(edge.adminUrl + '/upstreams')).body.json()) as {
      backend: string;
      endpoints: { gateway: boolean }[];
    }[];
    expect(status.find((b) => b.backend === 'ns/regional')?.endpoints[0]?.gateway).toBe(true);
  });

  it('answers 508 when a misconfiguration sends requests back into the same gateway', async () => {
    edge.applySnapshot(
      snapshot({
        backends: [
          backend('ns/loop', [edge.url], {
            models: ['loop'],
            upstreamAuth: { header: 'authorization', value: `Bearer ${edgeKey.secret}` },
          }),
        ],
        tenants: [tenant('acme')],
        keys: [edgeKey.key],
      }),
    );
    const r = await request(edge.url + '/v1/chat/completions', {
      method: 'POST',
      body: chat('loop'),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${edgeKey.secret}` },
    });
    expect(r.statusCode).toBe(508);
    expect(((await r.body.json()) as { error: { code: string } }).error.code).toBe('loop_detected');
  });
});
