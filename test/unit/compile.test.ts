import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { generateApiKey, hashApiKey, keyPrefix } from '../../dataplane/auth/keys.ts';
import { contentRevision, sha256Hex } from '../../dataplane/config/revision.ts';
import { parseSnapshot, SnapshotStore } from '../../dataplane/config/validate.ts';
import type { ApiKey, GpuBackend, Tenant } from '../../operator/api/v1alpha1/index.ts';
import { compileSnapshot, type CompileInput } from '../../operator/snapshot/compile.ts';
import { loadManifestDir } from '../../operator/snapshot/manifests.ts';

const NOW = new Date('2026-11-21T12:00:00Z');
const meta = (name: string, namespace = 'team') => ({ name, namespace });

function backend(name: string, spec: Partial<GpuBackend['spec']> = {}): GpuBackend {
  return {
    apiVersion: 'gpugate.io/v1alpha1',
    kind: 'GpuBackend',
    metadata: meta(name),
    spec: {
      endpoints: [{ url: 'http://10.0.0.1:8000', weight: 1, disabled: false }],
      ...spec,
    } as GpuBackend['spec'],
  };
}
function tenant(name: string, spec: Partial<Tenant['spec']> = {}): Tenant {
  return {
    apiVersion: 'gpugate.io/v1alpha1',
    kind: 'Tenant',
    metadata: meta(name),
    spec: spec as Tenant['spec'],
  };
}
function apiKey(name: string, spec: Partial<ApiKey['spec']>): ApiKey {
  return {
    apiVersion: 'gpugate.io/v1alpha1',
    kind: 'ApiKey',
    metadata: meta(name),
    spec: spec as ApiKey['spec'],
  };
}

function input(over: Partial<CompileInput> = {}): CompileInput {
  const key = generateApiKey();
  return {
    gpuBackends: [backend('llama', { models: ['llama-8b'] })],
    tenants: [tenant('acme', { quota: { credits: 10, period: 'Daily' } })],
    apiKeys: [apiKey('acme-ci', { tenant: 'acme' })],
    secrets: [{ namespace: 'team', name: 'acme-ci-gpugate-key', data: { key } }],
    settings: { replicas: 3 },
    now: NOW,
    ...over,
  };
}

describe('compileSnapshot', () => {
  it('produces a snapshot the data plane accepts, with defaults filled from the CRD schema', () => {
    const { snapshot, problems } = compileSnapshot(input());
    expect(problems).toEqual([]);
    const parsed = parseSnapshot(JSON.parse(JSON.stringify(snapshot)));
    expect(parsed.ok ? [] : parsed.problems).toEqual([]);
    const b = snapshot.backends[0]!;
    expect(b.id).toBe('team/llama');
    expect(b.balancing.policy).toBe('LeastRequest');
    expect(b.timeouts.totalMs).toBe(5 * 60_000);
    expect(b.maxRequestBytes).toBe(100 * 1024 * 1024);
    expect(b.routes).toEqual([{ pathPrefix: '/v1/', methods: [], public: false }]);
    expect(snapshot.settings.replicas).toBe(3);
    expect(snapshot.tenants[0]!.failOpen).toBe(true);
  });

  it('puts only the SHA-256 and prefix of a key into the snapshot, never the key', () => {
    const key = generateApiKey();
    const { snapshot } = compileSnapshot(
      input({ secrets: [{ namespace: 'team', name: 'acme-ci-gpugate-key', data: { key } }] }),
    );
    expect(snapshot.keys[0]).toMatchObject({
      id: 'team/acme-ci',
      tenant: 'team/acme',
      sha256: hashApiKey(key),
      prefix: keyPrefix(key),
    });
    expect(JSON.stringify(snapshot)).not.toContain(key);
  });

  it('gives the same revision for the same content in any input order, a new one for any change', () => {
    const base = input();
    const a = compileSnapshot(base).snapshot;
    const shuffled = compileSnapshot({
      ...base,
      gpuBackends: [...base.gpuBackends, backend('b2')].reverse(),
      now: new Date('2027-01-01T00:00:00Z'),
    }).snapshot;
    const again = compileSnapshot({ ...base, gpuBackends: [backend('b2'), ...base.gpuBackends] }).snapshot;
    expect(shuffled.revision).toBe(again.revision);
    expect(a.revision).not.toBe(again.revision);
    const changed = compileSnapshot({ ...base, settings: { replicas: 4 } }).snapshot;
    expect(changed.revision).not.toBe(a.revision);
  });

  it('recompiling the same objects (the memo of entries) gives what a first compile gives, with the data plane revision', () => {
    const base = input({
      apiKeys: [apiKey('acme-ci', { tenant: 'acme' }), apiKey('other', { tenant: 'acme' })],
    });
    base.secrets.push({ namespace: 'team', name: 'other-gpugate-key', data: { key: generateApiKey() } });
    const first = compileSnapshot(base).snapshot;
    const again = compileSnapshot(base).snapshot;
    expect(again).toEqual(first);
    expect(again.revision).toBe(contentRevision(again));
    // A new Secret value, a spec edit (a new object) and a tenant gone each change the memoized entry.
    const rotated = generateApiKey();
    const withRotated = compileSnapshot({
      ...base,
      secrets: [{ namespace: 'team', name: 'acme-ci-gpugate-key', data: { key: rotated } }, base.secrets[1]!],
    }).snapshot;
    expect(withRotated.keys[0]!.sha256).toBe(hashApiKey(rotated));
    expect(withRotated.revision).toBe(contentRevision(withRotated));
    const edited = compileSnapshot({
      ...base,
      apiKeys: [apiKey('acme-ci', { tenant: 'acme', disabled: true }), base.apiKeys[1]!],
    }).snapshot;
    expect(edited.keys[0]!.disabled).toBe(true);
    expect(edited.revision).toBe(contentRevision(edited));
    const { snapshot: noTenant, problems } = compileSnapshot({ ...base, tenants: [] });
    expect(noTenant.keys).toEqual([]);
    expect(problems.map((p) => p.reason)).toEqual(['TenantNotFound', 'TenantNotFound']);
    expect(compileSnapshot(base).snapshot.keys).toEqual(first.keys);
  });

  it('reports an ApiKey naming a missing Tenant and leaves it out, without failing the rest', () => {
    const { snapshot, problems } = compileSnapshot(
      input({ apiKeys: [apiKey('acme-ci', { tenant: 'acme' }), apiKey('ghost-key', { tenant: 'ghost' })] }),
    );
    expect(snapshot.keys.map((k) => k.id)).toEqual(['team/acme-ci']);
    expect(problems).toEqual([
      expect.objectContaining({
        kind: 'ApiKey',
        name: 'ghost-key',
        reason: 'TenantNotFound',
        excluded: true,
      }),
    ]);
    expect(problems[0]!.message).toContain('team/ghost');
  });

  it('reports a missing Secret and a Secret without the key, by name', () => {
    const { problems } = compileSnapshot(
      input({
        apiKeys: [
          apiKey('no-secret', { tenant: 'acme', secretRef: { name: 'nope', key: 'key' } }),
          apiKey('no-field', { tenant: 'acme', secretRef: { name: 'present', key: 'token' } }),
        ],
        secrets: [{ namespace: 'team', name: 'present', data: { key: generateApiKey() } }],
      }),
    );
    expect(problems.map((p) => [p.name, p.reason])).toEqual([
      ['no-field', 'SecretKeyNotFound'],
      ['no-secret', 'SecretNotFound'],
    ]);
    expect(problems[0]!.message).toContain('has no key "token"');
  });

  it('refuses a Secret holding something that is not a gpugate key, without echoing it', () => {
    const { snapshot, problems } = compileSnapshot(
      input({
        apiKeys: [apiKey('plain', { tenant: 'acme', secretRef: { name: 's', key: 'key' } })],
        secrets: [{ namespace: 'team', name: 's', data: { key: 'hunter2-not-a-key' } }],
      }),
    );
    expect(snapshot.keys).toEqual([]);
    expect(problems[0]).toMatchObject({ reason: 'InvalidKey' });
    expect(problems[0]!.message).not.toContain('hunter2');
  });

  it('reports a key used by two ApiKeys and keeps the first by name', () => {
    const key = generateApiKey();
    const { snapshot, problems } = compileSnapshot(
      input({
        apiKeys: [
          apiKey('b-copy', { tenant: 'acme', secretRef: { name: 's', key: 'key' } }),
          apiKey('a-orig', { tenant: 'acme', secretRef: { name: 's', key: 'key' } }),
        ],
        secrets: [{ namespace: 'team', name: 's', data: { key } }],
      }),
    );
    expect(snapshot.keys.map((k) => k.id)).toEqual(['team/a-orig']);
    expect(problems).toEqual([expect.objectContaining({ name: 'b-copy', reason: 'DuplicateKey' })]);
  });

  it('resolves allowedBackends in the tenant namespace or across namespaces, and reports unknown ones', () => {
    const { snapshot, problems } = compileSnapshot(
      input({ tenants: [tenant('acme', { allowedBackends: ['llama', 'team/llama', 'other/none'] })] }),
    );
    expect(snapshot.tenants[0]!.allowedBackends).toEqual(['team/llama', 'team/llama']);
    expect(problems).toEqual([
      expect.objectContaining({ kind: 'Tenant', reason: 'BackendNotFound', excluded: false }),
    ]);
  });

  it('leaves out a tenant none of whose allowed backends exists, rather than opening every backend', () => {
    const { snapshot, problems } = compileSnapshot(
      input({ tenants: [tenant('acme', { allowedBackends: ['gone'] })], apiKeys: [] }),
    );
    expect(snapshot.tenants).toEqual([]);
    expect(problems.some((p) => p.excluded && p.kind === 'Tenant')).toBe(true);
  });

  it('reports an invalid spec with the field path (standalone manifests skip the API server)', () => {
    const { snapshot, problems } = compileSnapshot(
      input({ gpuBackends: [backend('bad', { balancing: { policy: 'Random' } } as never)] }),
    );
    expect(snapshot.backends).toEqual([]);
    expect(problems[0]).toMatchObject({ kind: 'GpuBackend', name: 'bad', reason: 'InvalidSpec' });
    expect(problems[0]!.message).toContain('spec.balancing.policy');
  });

  it('merges discovered pod and registered endpoints, static entries winning on the same URL', () => {
    const { snapshot } = compileSnapshot(
      input({
        discoveredEndpoints: {
          'team/llama': [
            { url: 'http://10.0.0.1:8000', ready: false, source: 'pod' },
            { url: 'http://10.0.0.9:8000', ready: true, source: 'registered' },
          ],
        },
      }),
    );
    expect(snapshot.backends[0]!.endpoints).toEqual([
      { id: 'http://10.0.0.1:8000', url: 'http://10.0.0.1:8000', weight: 1, source: 'static', ready: true },
      {
        id: 'http://10.0.0.9:8000',
        url: 'http://10.0.0.9:8000',
        weight: 1,
        source: 'registered',
        ready: true,
      },
    ]);
  });

  it('hashes the registration secret and resolves the upstream credential', () => {
    const { snapshot, problems } = compileSnapshot(
      input({
        gpuBackends: [
          backend('reg', {
            registration: { secretRef: { name: 'reg', key: 'secret' }, ttl: '90s' },
            upstreamAuth: {
              secretRef: { name: 'up', key: 'token' },
              header: 'Authorization',
              scheme: 'Bearer',
            },
          }),
        ],
        secrets: [
          { namespace: 'team', name: 'reg', data: { secret: 'shared' } },
          { namespace: 'team', name: 'up', data: { token: 'backend-token' } },
        ],
        apiKeys: [],
      }),
    );
    expect(problems).toEqual([]);
    expect(snapshot.backends[0]!.registration).toEqual({ secretSha256: sha256Hex('shared'), ttlMs: 90_000 });
    expect(snapshot.backends[0]!.upstreamAuth).toEqual({
      header: 'Authorization',
      value: 'Bearer backend-token',
    });
  });

  it('compiles the examples/ manifests (with generated key Secrets) without problems', () => {
    const set = loadManifestDir(join(import.meta.dirname, '..', '..', 'examples'));
    const secrets = set.apiKeys.map((k) => ({
      namespace: k.metadata.namespace!,
      name: `${k.metadata.name}-gpugate-key`,
      data: { key: generateApiKey() },
    }));
    const { snapshot, problems } = compileSnapshot({ ...set, secrets, settings: { replicas: 1 }, now: NOW });
    expect(problems).toEqual([]);
    expect(snapshot.backends.map((b) => b.id)).toEqual(['default/image-enhance', 'default/llama']);
    expect(snapshot.tenants.map((t) => t.id)).toEqual(['default/research', 'default/trial']);
    expect(snapshot.keys).toHaveLength(2);
  });
});

describe('SnapshotStore', () => {
  const fresh = (over: Partial<CompileInput> = {}) =>
    JSON.parse(JSON.stringify(compileSnapshot(input(over)).snapshot)) as Record<string, unknown>;

  it('keeps the last good snapshot when offered a broken, tampered or older one', () => {
    const store = new SnapshotStore();
    const good = fresh();
    expect(store.offer(good)).toMatchObject({ accepted: true, changed: true });

    const future = { ...good, schemaVersion: 2 };
    expect(store.offer(future)).toMatchObject({ accepted: false, stale: false });

    const tampered = { ...good, settings: { ...(good.settings as object), replicas: 9 } };
    const refused = store.offer(tampered);
    expect(refused).toMatchObject({ accepted: false, stale: false });
    expect(JSON.stringify(refused)).toContain('does not match the content');

    const older = fresh({ settings: { replicas: 7 }, now: new Date('2020-01-01T00:00:00Z') });
    expect(store.offer(older)).toMatchObject({ accepted: false, stale: true });
    expect(store.current?.revision).toBe(good.revision);
  });

  it('refuses an endpoint URL that does not parse, naming its path', () => {
    const snap = fresh();
    const backends = snap.backends as { endpoints: { url: string }[] }[];
    backends[0]!.endpoints[0]!.url = 'http://[broken';
    const body = { ...snap };
    body.revision = contentRevision(body);
    const parsed = parseSnapshot(body);
    expect(parsed.ok ? [] : parsed.problems).toEqual([
      { path: '/backends/0/endpoints/0/url', message: 'endpoint URL "http://[broken" is not a valid URL' },
    ]);
  });
});

describe('compileSnapshot: generated key Secrets are matched by owner UID', () => {
  const withUid = (uid: string): ApiKey => ({
    ...apiKey('acme-ci', { tenant: 'acme' }),
    metadata: { ...meta('acme-ci'), uid },
  });

  it('refuses a generated Secret owned by an earlier ApiKey of the same name (a revoked key stays revoked)', () => {
    const key = generateApiKey();
    const { snapshot, problems } = compileSnapshot(
      input({
        apiKeys: [withUid('uid-new')],
        secrets: [{ namespace: 'team', name: 'acme-ci-gpugate-key', data: { key }, ownerUids: ['uid-old'] }],
      }),
    );
    expect(snapshot.keys).toEqual([]);
    expect(problems).toEqual([
      expect.objectContaining({ kind: 'ApiKey', name: 'acme-ci', reason: 'SecretNotOwned', excluded: true }),
    ]);
    expect(problems[0]!.message).toContain('uid-new');
    expect(problems[0]!.message).not.toContain(key);
  });

  it('uses the UID-suffixed Secret the new ApiKey owns while the old one still holds the usual name', () => {
    const [oldKey, newKey] = [generateApiKey(), generateApiKey()];
    const { snapshot, problems } = compileSnapshot(
      input({
        apiKeys: [withUid('abcdef12-3456')],
        secrets: [
          { namespace: 'team', name: 'acme-ci-gpugate-key', data: { key: oldKey }, ownerUids: ['uid-old'] },
          {
            namespace: 'team',
            name: 'acme-ci-gpugate-key-abcdef12',
            data: { key: newKey },
            ownerUids: ['abcdef12-3456'],
          },
        ],
      }),
    );
    expect(problems).toEqual([]);
    expect(snapshot.keys.map((k) => k.sha256)).toEqual([hashApiKey(newKey)]);
  });

  it('refuses an owner-less Secret of the generated name, and accepts the one the ApiKey owns', () => {
    const key = generateApiKey();
    const secret = { namespace: 'team', name: 'acme-ci-gpugate-key', data: { key } };
    const orphan = compileSnapshot(
      input({ apiKeys: [withUid('uid-1')], secrets: [{ ...secret, ownerUids: [] }] }),
    );
    expect(orphan.snapshot.keys).toEqual([]);
    expect(orphan.problems.map((p) => p.reason)).toEqual(['SecretNotOwned']);
    const owned = compileSnapshot(
      input({ apiKeys: [withUid('uid-1')], secrets: [{ ...secret, ownerUids: ['uid-1'] }] }),
    );
    expect(owned.problems).toEqual([]);
    expect(owned.snapshot.keys.map((k) => k.sha256)).toEqual([hashApiKey(key)]);
  });

  it('keeps name matching for a user-referenced Secret and for objects without a UID (standalone manifests)', () => {
    const key = generateApiKey();
    const referenced = compileSnapshot(
      input({
        apiKeys: [
          {
            ...withUid('uid-1'),
            spec: { tenant: 'acme', secretRef: { name: 'mine', key: 'k' } } as ApiKey['spec'],
          },
        ],
        secrets: [{ namespace: 'team', name: 'mine', data: { k: key }, ownerUids: [] }],
      }),
    );
    expect(referenced.problems).toEqual([]);
    expect(referenced.snapshot.keys.map((k) => k.sha256)).toEqual([hashApiKey(key)]);
    const standalone = compileSnapshot(
      input({ secrets: [{ namespace: 'team', name: 'acme-ci-gpugate-key', data: { key } }] }),
    );
    expect(standalone.snapshot.keys.map((k) => k.sha256)).toEqual([hashApiKey(key)]);
  });
});
