import { describe, expect, it } from 'vitest';
import { prefixMatches, RouteTable } from '../../dataplane/routing/routes.ts';
import { taskPathPattern } from '../../dataplane/routing/runtime.ts';

describe('prefixMatches', () => {
  it('matches on path segment boundaries only', () => {
    expect(prefixMatches('/v1', '/v1')).toBe(true);
    expect(prefixMatches('/v1', '/v1/chat')).toBe(true);
    expect(prefixMatches('/v1', '/v1x')).toBe(false);
    expect(prefixMatches('/v1/', '/v1/x')).toBe(true);
    expect(prefixMatches('/', '/anything')).toBe(true);
    expect(prefixMatches('/v1/chat', '/v1')).toBe(false);
  });
});

describe('RouteTable', () => {
  const table = new RouteTable([
    { backend: 'generic', route: { pathPrefix: '/v1', methods: [], public: false } },
    { backend: 'chat', route: { pathPrefix: '/v1/chat', methods: ['POST'], public: false } },
    { backend: 'health', route: { pathPrefix: '/health', methods: ['GET'], public: true } },
  ]);

  it('returns every matching entry, longest prefix first', () => {
    expect(table.match('/v1/chat/completions', 'POST')?.map((e) => e.backend)).toEqual(['chat', 'generic']);
    expect(table.match('/v1/chat/completions', 'GET')?.map((e) => e.backend)).toEqual(['generic']);
  });

  it('tells an unknown path (null) from a known path with a method nobody takes (empty)', () => {
    expect(table.match('/nope', 'GET')).toBeNull();
    expect(table.match('/health', 'POST')).toEqual([]);
  });
});

describe('taskPathPattern', () => {
  it('captures the id and nothing across segments', () => {
    const p = taskPathPattern('/status/{id}');
    expect(p.exec('/status/abc-1')?.[1]).toBe('abc-1');
    expect(p.exec('/status/a/b')).toBeNull();
    expect(taskPathPattern('/jobs/{id}/result.png').exec('/jobs/7/result.png')?.[1]).toBe('7');
    expect(taskPathPattern('/a.b/{id}').exec('/aXb/1')).toBeNull();
  });
});
