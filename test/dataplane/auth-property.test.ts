// Property over real sockets: arbitrary Authorization, x-api-key, identity and gateway headers never
// produce a 5xx, never authenticate without a valid credential, and never reach the backend.
import fc from 'fast-check';
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

describe('credentials and headers through the gateway (property)', () => {
  let plane: DataPlane;
  let up: Upstream;
  const valid = apiKey('acme');

  beforeAll(async () => {
    up = await startUpstream('up');
    plane = await startPlane();
    plane.applySnapshot(
      snapshot({
        backends: [backend('ns/llm', [up.url])],
        tenants: [
          tenant('acme', {
            jwt: {
              issuer: 'https://iss',
              audiences: [],
              hsSecret: 'property-test-secret-0123456789',
              subjectClaim: 'sub',
              userNameClaim: 'name',
            },
          }),
        ],
        keys: [valid.key],
        settings: { clientLimits: { publicRequestsPerMinute: 0, authFailuresPerMinute: 0 } },
      }),
    );
  });

  afterAll(async () => {
    await plane.close({ drainMs: 1000 });
    await up.close();
  });

  it('answers 4xx to every invalid credential and header mix, and forwards nothing', async () => {
    // Header values as HTTP allows them: visible ASCII, space and tab, no CR/LF.
    const value = fc
      .array(
        fc.oneof(
          fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
          fc.constantFrom('\t', 'gpg_', 'Bearer ', 'eyJhbGciOiJub25lIn0', '.', valid.secret.slice(0, 30)),
        ),
        { maxLength: 50 },
      )
      .map((a) => a.join('').trim());
    const headerSet = fc.record(
      {
        authorization: value,
        'x-api-key': value,
        'x-user-id': value,
        'x-username': value,
        'x-gpugate-tenant': value,
        'x-forwarded-for': value,
        'content-type': fc.constantFrom('application/json', 'text/plain', 'application/json; charset=x'),
      },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(headerSet, async (headers) => {
        const clean: Record<string, string> = {};
        for (const [k, v] of Object.entries(headers)) if (v !== '') clean[k] = v;
        const res = await request(`${plane.url}/v1/chat/completions`, {
          method: 'POST',
          headers: clean,
          body: chat('m'),
        });
        await res.body.dump();
        expect(res.statusCode).toBeGreaterThanOrEqual(400);
        expect(res.statusCode).toBeLessThan(500);
      }),
      { numRuns: 300 },
    );
    expect(up.requests.length).toBe(0);
    const ok = await request(`${plane.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${valid.secret}`, 'content-type': 'application/json' },
      body: chat('m'),
    });
    expect(ok.statusCode).toBe(200);
    await ok.body.dump();
  });
});
