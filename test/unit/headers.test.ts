import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  downstreamResponseHeaders,
  saneRequestId,
  upstreamRequestHeaders,
} from '../../dataplane/proxy/headers.ts';

const ctx = {
  requestId: 'r-1',
  clientIp: '192.0.2.1',
  proto: 'https',
  via: '1.1 gpugate (abc)',
  identity: { tenant: 'ns/acme', userId: 'u-1', userName: 'ana' },
  upstreamAuth: { header: 'Authorization', value: 'Bearer backend' },
};

describe('upstreamRequestHeaders', () => {
  it('drops hop-by-hop headers, including those named in Connection', () => {
    const out = upstreamRequestHeaders(
      {
        connection: 'keep-alive, X-Trace-Hop',
        'x-trace-hop': '1',
        'keep-alive': 'timeout=5',
        te: 'trailers',
        'transfer-encoding': 'chunked',
        upgrade: 'h2c',
        'x-kept': 'yes',
        host: 'gw.example',
      },
      ctx,
    );
    for (const h of ['connection', 'x-trace-hop', 'keep-alive', 'te', 'transfer-encoding', 'upgrade', 'host'])
      expect(out[h]).toBeUndefined();
    expect(out['x-kept']).toBe('yes');
    expect(out['x-forwarded-host']).toBe('gw.example');
  });

  it('replaces client identity headers with the principal and the client key with the backend credential', () => {
    const out = upstreamRequestHeaders(
      {
        authorization: 'Bearer gpg_secret',
        'x-api-key': 'gpg_secret',
        'x-gpugate-tenant': 'evil',
        'x-gpugate-foo': 'x',
        'x-user-id': 'root',
        'x-username': 'root',
      },
      ctx,
    );
    expect(out).toMatchObject({
      'x-gpugate-tenant': 'ns/acme',
      'x-user-id': 'u-1',
      'x-username': 'ana',
      authorization: 'Bearer backend',
    });
    expect(out['x-api-key']).toBeUndefined();
    expect(out['x-gpugate-foo']).toBeUndefined();
    expect(JSON.stringify(out)).not.toContain('gpg_secret');
  });

  it('never lets any client header carry the client key or identity upstream (property)', () => {
    fc.assert(
      fc.property(
        fc.dictionary(fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/), fc.string({ maxLength: 40 })),
        (headers) => {
          const incoming = { ...headers, authorization: 'Bearer gpg_KEY', 'x-api-key': 'gpg_KEY' };
          const out = upstreamRequestHeaders(incoming, {
            ...ctx,
            identity: { tenant: 't', userId: null, userName: null },
            upstreamAuth: null,
          });
          expect(out.authorization).toBeUndefined();
          expect(out['x-api-key']).toBeUndefined();
          expect(out['x-gpugate-tenant']).toBe('t');
          expect(out['x-user-id']).toBeUndefined();
          for (const name of Object.keys(out))
            if (name.startsWith('x-gpugate-')) expect(name).toBe('x-gpugate-tenant');
        },
      ),
    );
  });

  it('appends to X-Forwarded-For and Via', () => {
    const out = upstreamRequestHeaders({ 'x-forwarded-for': '10.0.0.1', via: '1.1 ingress' }, ctx);
    expect(out['x-forwarded-for']).toBe('10.0.0.1, 192.0.2.1');
    expect(out.via).toBe('1.1 ingress, 1.1 gpugate (abc)');
    expect(out['x-forwarded-proto']).toBe('https');
  });
});

describe('downstreamResponseHeaders', () => {
  it('strips hop-by-hop headers and stamps the gateway headers', () => {
    const out = downstreamResponseHeaders(
      {
        'content-type': 'text/event-stream',
        'transfer-encoding': 'chunked',
        connection: 'keep-alive',
        'x-gpugate-version': '9.9',
        via: '1.1 vllm',
      },
      { requestId: 'r', version: '0.1.0', backend: 'ns/b' },
    );
    expect(out).toEqual({
      'content-type': 'text/event-stream',
      via: '1.1 vllm, 1.1 gpugate',
      'x-request-id': 'r',
      'x-gpugate-version': '0.1.0',
      'x-gpugate-backend': 'ns/b',
    });
  });
});

describe('saneRequestId', () => {
  it('keeps short plain ids and refuses the rest', () => {
    expect(saneRequestId('abc-123_x.y:z')).toBe('abc-123_x.y:z');
    expect(saneRequestId('has space')).toBeNull();
    expect(saneRequestId('x'.repeat(129))).toBeNull();
    expect(saneRequestId(['a', 'b'])).toBeNull();
    expect(saneRequestId(undefined)).toBeNull();
  });
});
