// Requests to public routes (no credentials) are metered under the pseudo-tenant PUBLIC_TENANT,
// through the real request path and the metering writer into real Postgres; a request refused for
// missing credentials on a private route is not (it never reached admission).
import type pg from 'pg';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { PUBLIC_TENANT } from '../../dataplane/metering/usage.ts';
import { createMeteringWriter } from '../../dataplane/metering/writer.ts';
import type { DataPlane } from '../../dataplane/server.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import {
  apiKey,
  backend,
  quietLogger,
  snapshot,
  startPlane,
  startUpstream,
  tenant,
  type Upstream,
} from './harness.ts';

describe('metering of public routes', () => {
  const db = useTestDatabase();
  let pool: pg.Pool;
  let upstream: Upstream;
  let plane: DataPlane;
  let writer: ReturnType<typeof createMeteringWriter>;
  const key = apiKey('team/acme');

  beforeAll(async () => {
    await migrate(db.url);
    pool = suitePool(db, 2);
    upstream = await startUpstream('public-up');
    writer = createMeteringWriter({ pool, logger: quietLogger, flushIntervalMs: 50 });
    plane = await startPlane({ usageSink: writer });
    const snap = snapshot({
      backends: [
        backend('team/llm', [upstream.url], {
          routes: [
            { pathPrefix: '/v1', methods: [], public: false },
            { pathPrefix: '/demo', methods: ['POST'], public: true, cost: 2 },
          ],
          pricing: { perRequest: 1, perInputToken: 0, perOutputToken: 0 },
        }),
      ],
      tenants: [tenant('team/acme')],
      keys: [key.key],
    });
    expect(plane.applySnapshot(snap)).toMatchObject({ accepted: true });
  });
  afterAll(async () => {
    await plane?.close({ drainMs: 0 });
    await writer?.flushAndClose();
    await upstream?.close();
    await pool?.end();
  });

  it('records one event per public request under the public pseudo-tenant, and none for a 401', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const id = `public-${Date.now()}-${i}`;
      ids.push(id);
      const r = await request(`${plane.url}/demo/chat`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-request-id': id },
        body: JSON.stringify({ model: 'any', messages: [] }),
      });
      expect(r.statusCode).toBe(200);
      await r.body.dump();
    }
    const refusedId = `private-${Date.now()}`;
    const refused = await request(`${plane.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': refusedId },
      body: JSON.stringify({ model: 'any', messages: [] }),
    });
    expect(refused.statusCode).toBe(401);
    await refused.body.dump();

    // The proxy records an event when the response closes; the writer flushes every 50 ms.
    const deadline = Date.now() + 10_000;
    let rows: {
      request_id: string;
      tenant: string;
      key_id: string | null;
      user_id: string | null;
      route: string;
      status: number;
      credits: number;
    }[] = [];
    while (Date.now() < deadline) {
      await writer.flush();
      ({ rows } = await pool.query(
        `SELECT request_id, tenant, key_id, user_id, route, status, credits::float8 AS credits
         FROM usage_events WHERE request_id = ANY($1::text[]) ORDER BY request_id`,
        [[...ids, refusedId]],
      ));
      if (rows.length >= 3) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(rows).toEqual(
      ids.map((id) => ({
        request_id: id,
        tenant: PUBLIC_TENANT,
        key_id: null,
        user_id: null,
        route: '/demo',
        status: 200,
        credits: 3,
      })),
    );
    const metrics = await (await fetch(`${plane.adminUrl}/metrics`)).text();
    expect(metrics).toMatch(
      /gpugate_usage_requests_total\{tenant="\(public\)",backend="team\/llm",route="\/demo",code_class="2xx"\} 3/,
    );
  });
});
