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
  const table = new RouteTable(
    [
      { backend: 'generic', route: { pathPrefix: '/v1', methods: [], public: false } },
      { backend: 'chat', route: { pathPrefix: '/v1/chat', methods: ['POST'], public: false } },
      { backend: 'health', route: { pathPrefix: '/health', methods: ['GET'], public: true } },
    ],
    { named: () => [], any: () => true },
  );
  const match = (path: string, method: string) => table.resolve(path, method)?.entries ?? null;

  it('returns every matching entry, longest prefix first', () => {
    expect(match('/v1/chat/completions', 'POST')?.map((e) => e.backend)).toEqual(['chat', 'generic']);
    expect(match('/v1/chat/completions', 'GET')?.map((e) => e.backend)).toEqual(['generic']);
  });

  it('tells an unknown path (null) from a known path with a method nobody takes (empty)', () => {
    expect(match('/nope', 'GET')).toBeNull();
    expect(match('/health', 'POST')).toEqual([]);
  });
});

describe('RouteTable.resolve', () => {
  type B = { id: string; models: string[] };
  const b = (id: string, models: string[]): B => ({ id, models });
  const table = new RouteTable<B>(
    [
      { backend: b('star', ['*']), route: { pathPrefix: '/v1', methods: [], public: false } },
      { backend: b('llama', ['llama', 'mistral']), route: { pathPrefix: '/v1', methods: [], public: false } },
      { backend: b('chat', ['gpt']), route: { pathPrefix: '/v1/chat', methods: ['POST'], public: false } },
      { backend: b('open', ['tiny']), route: { pathPrefix: '/open', methods: [], public: true } },
      { backend: b('mixed-pub', ['x']), route: { pathPrefix: '/mixed', methods: [], public: true } },
      { backend: b('mixed-priv', ['x']), route: { pathPrefix: '/mixed', methods: ['POST'], public: false } },
      {
        backend: b('open-sub', ['tiny']),
        route: { pathPrefix: '/open/private', methods: [], public: false },
      },
    ],
    { named: (x) => x.models.filter((m) => m !== '*'), any: (x) => x.models.includes('*') },
  );
  const ids = (list: readonly { backend: B }[] | undefined) => list?.map((e) => e.backend.id);

  it('prefers backends naming the model on the longest prefix, then on shorter ones, then * backends', () => {
    const m = table.resolve('/v1/chat/completions', 'POST');
    expect(ids(m?.entries)).toEqual(['chat', 'star', 'llama']);
    expect(ids(m?.serving('gpt'))).toEqual(['chat']);
    expect(ids(m?.serving('mistral'))).toEqual(['llama']);
    expect(ids(m?.serving('anything-else'))).toEqual(['star']);
    expect(ids(table.resolve('/v1/chat/completions', 'GET')?.entries)).toEqual(['star', 'llama']);
  });

  it('makes a request public only when every route of the longest prefix is, and then lets it reach public routes only', () => {
    const open = table.resolve('/open/x', 'GET');
    expect(open?.isPublic).toBe(true);
    expect(ids(open?.usable)).toEqual(['open']);
    // A private route under a public prefix: the longer prefix decides.
    const sub = table.resolve('/open/private/x', 'GET');
    expect(sub?.isPublic).toBe(false);
    expect(ids(sub?.usable)).toEqual(['open-sub', 'open']);
    // A model several usable backends name: all of them, longest prefix first.
    expect(ids(sub?.serving('tiny'))).toEqual(['open-sub', 'open']);
    expect(table.resolve('/mixed', 'GET')?.isPublic).toBe(true);
    const mixed = table.resolve('/mixed', 'POST');
    expect(mixed?.isPublic).toBe(false);
    expect(ids(mixed?.usable)).toEqual(['mixed-pub', 'mixed-priv']);
    // No usable backend names the model or serves '*': nothing serves it.
    expect(open?.serving('llama')).toEqual([]);
  });

  it('resolves each path shape once per table: later requests share the result', () => {
    const first = table.resolve('/v1/chat/completions', 'POST');
    expect(table.resolve('/v1/chat/other', 'POST')).toBe(first);
    expect(table.resolve('/v1/models', 'POST')).not.toBe(first);
    expect(table.resolve('/nope', 'POST')).toBeNull();
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
