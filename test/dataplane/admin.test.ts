// The admin port: readiness, metrics, and PUT /config authentication and refusals.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import { backend, snapshot, startPlane } from './harness.ts';

const TOKEN = 'push-token-for-tests';

describe('admin port', () => {
  let plane: DataPlane;
  beforeAll(async () => {
    plane = await startPlane();
  });
  afterAll(async () => {
    await plane.close({ drainMs: 1000 });
  });

  const put = (body: unknown, token: string | null = TOKEN) =>
    request(plane.adminUrl + '/config', {
      method: 'PUT',
      body: JSON.stringify(body),
      headers: {
        'content-type': 'application/json',
        ...(token !== null ? { authorization: `Bearer ${token}` } : {}),
      },
    });

  it('is not ready and the proxy answers 503 before the first snapshot', async () => {
    const ready = await request(plane.adminUrl + '/readyz');
    expect(ready.statusCode).toBe(503);
    await ready.body.dump();
    const live = await request(plane.adminUrl + '/healthz');
    expect(live.statusCode).toBe(200);
    await live.body.dump();
    const proxied = await request(plane.url + '/v1/models');
    expect(proxied.statusCode).toBe(503);
    expect(((await proxied.body.json()) as { error: { code: string } }).error.code).toBe('not_ready');
  });

  it('refuses PUT /config without the push token or with a wrong one', async () => {
    const snap = snapshot({ backends: [backend('ns/a', ['http://127.0.0.1:9'])] });
    for (const token of [null, 'wrong-token', TOKEN + 'x']) {
      const res = await put(snap, token);
      expect(res.statusCode).toBe(401);
      await res.body.dump();
    }
    expect(plane.revision()).toBeNull();
  });

  it('applies a snapshot, reports unchanged for the same one, and becomes ready', async () => {
    const snap = snapshot({ backends: [backend('ns/a', ['http://127.0.0.1:9'])] });
    const res = await put(snap);
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toEqual({ revision: snap.revision, changed: true });
    const again = await put(snap);
    expect(await again.body.json()).toEqual({ revision: snap.revision, changed: false });
    const ready = await request(plane.adminUrl + '/readyz');
    expect(ready.statusCode).toBe(200);
    await ready.body.dump();
  });

  it('refuses a broken snapshot with 400 and the problems, keeping the current one', async () => {
    const current = plane.revision();
    const broken = {
      ...snapshot({ backends: [backend('ns/b', ['http://127.0.0.1:9'])] }),
      revision: 'f'.repeat(64),
    };
    const res = await put(broken);
    expect(res.statusCode).toBe(400);
    const body = (await res.body.json()) as { problems: { path: string }[] };
    expect(body.problems[0]?.path).toBe('/revision');
    const wrongType = await put({ schemaVersion: 1, nonsense: true });
    expect(wrongType.statusCode).toBe(400);
    await wrongType.body.dump();
    expect(plane.revision()).toBe(current);
  });

  it('refuses an older snapshot with 409', async () => {
    const current = plane.revision();
    const older = snapshot({
      backends: [backend('ns/old', ['http://127.0.0.1:9'])],
      generatedAt: '2020-01-01T00:00:00Z',
    });
    const res = await put(older);
    expect(res.statusCode).toBe(409);
    expect(((await res.body.json()) as { error: { code: string } }).error.code).toBe('stale_snapshot');
    expect(plane.revision()).toBe(current);
  });

  it('exports gpugate_ metrics in Prometheus text', async () => {
    const res = await request(plane.adminUrl + '/metrics');
    expect(res.statusCode).toBe(200);
    const text = await res.body.text();
    expect(text).toContain('gpugate_config_snapshot_applies_total{result="applied"} 1');
    expect(text).toContain('gpugate_proxy_requests_total');
    expect(text).toContain('gpugate_config_snapshot_age_seconds');
  });
});
