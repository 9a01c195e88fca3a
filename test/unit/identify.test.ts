import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { buildKeyIndex, identify } from '../../dataplane/auth/identify.ts';
import { apiKey, tenant } from '../dataplane/harness.ts';

const { secret, key } = apiKey('t', { id: 't/k' });
const index = buildKeyIndex([key], [tenant('t')]);

describe('identify', () => {
  it('accepts the key as a Bearer token (any scheme case) and as x-api-key', () => {
    expect(identify({ authorization: `Bearer ${secret}` }, index, 0).ok).toBe(true);
    expect(identify({ authorization: `bearer ${secret}` }, index, 0).ok).toBe(true);
    expect(identify({ 'x-api-key': secret }, index, 0).ok).toBe(true);
  });

  it('never authenticates, throws or echoes the credential for arbitrary header values (property)', () => {
    fc.assert(
      fc.property(
        fc.option(fc.string({ maxLength: 80 })),
        fc.option(fc.string({ maxLength: 80 })),
        (auth, apiKey) => {
          const headers: Record<string, string> = {};
          if (auth !== null) headers.authorization = auth;
          if (apiKey !== null) headers['x-api-key'] = apiKey;
          const r = identify(headers, index, 0);
          const presented = [auth, apiKey].some(
            (v) => v !== null && v.replace(/^bearer /i, '').trim() === secret,
          );
          if (!presented) {
            expect(r.ok).toBe(false);
            if (!r.ok) {
              expect(r.error.status).toBe(401);
              for (const v of [auth, apiKey])
                if (v && v.trim().length > 3) expect(r.error.message).not.toContain(v.trim());
            }
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('rejects a key with one character changed by its checksum, before any lookup', () => {
    const last = secret.at(-1) === 'a' ? 'b' : 'a';
    const r = identify({ authorization: `Bearer ${secret.slice(0, -1)}${last}` }, index, 0);
    expect(r.ok || r.error.code).toBe('invalid_api_key');
  });
});
