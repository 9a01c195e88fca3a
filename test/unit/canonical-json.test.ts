// canonicalJson takes a native JSON.stringify shortcut when a value is already in canonical order; it
// must give exactly the text of the sorting writer for every value, in order or not. The operator
// pushes snapshots as that canonical text, so the data plane's revision check takes the shortcut.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalJson, contentRevision } from '../../dataplane/config/revision.ts';
import { parseSnapshot } from '../../dataplane/config/validate.ts';
import { compileSnapshot, snapshotJson } from '../../operator/snapshot/compile.ts';
import { generateApiKey } from '../../dataplane/auth/keys.ts';

/** The definition: members sorted by UTF-16 code units, undefined members dropped, no whitespace. */
function reference(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(reference).join(',')}]`;
  const keys = Object.keys(value)
    .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${keys.map((k) => `${JSON.stringify(k)}:${reference((value as Record<string, unknown>)[k])}`).join(',')}}`;
}

/** The same value with every object's members inserted in sorted order (what JSON.parse of canonical text gives). */
function sortedCopy(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map(sortedCopy);
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(value).sort()) {
    // defineProperty: an own '__proto__' member (JSON.parse makes those) must stay a member.
    Object.defineProperty(out, k, {
      value: sortedCopy((value as Record<string, unknown>)[k]),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

const anything = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    fc.jsonValue(),
    fc.constantFrom(undefined, Number.NaN, -0, Infinity, () => 1, new Date(0), '10', '2'),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(
      fc.oneof(fc.string(), fc.constantFrom('2', '10', '__proto__', 'toJSON', 'a', 'B')),
      tie('value'),
      {
        maxKeys: 5,
      },
    ),
  ),
})).value;

describe('canonicalJson', () => {
  it('equals the sorting definition for any value, whatever its member order', () => {
    fc.assert(
      fc.property(anything, (v) => {
        expect(canonicalJson(v)).toBe(reference(v));
        const sorted = sortedCopy(v);
        expect(canonicalJson(sorted)).toBe(reference(v));
      }),
      { numRuns: 3000 },
    );
  });

  it('round-trips its own text through JSON.parse to the same text', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const text = canonicalJson(v);
        expect(canonicalJson(JSON.parse(text))).toBe(text);
      }),
      { numRuns: 2000 },
    );
  });

  it('the operator pushes a compiled snapshot as exactly its canonical text, which the data plane accepts', () => {
    const key = generateApiKey();
    const { snapshot } = compileSnapshot({
      gpuBackends: [
        {
          apiVersion: 'gpugate.io/v1alpha1',
          kind: 'GpuBackend',
          metadata: { name: 'llama', namespace: 'team' },
          spec: { models: ['llama-8b'], endpoints: [{ url: 'http://10.0.0.1:8000' }] },
        },
      ],
      tenants: [
        {
          apiVersion: 'gpugate.io/v1alpha1',
          kind: 'Tenant',
          metadata: { name: 'acme', namespace: 'team' },
          spec: {},
        },
      ],
      apiKeys: [
        {
          apiVersion: 'gpugate.io/v1alpha1',
          kind: 'ApiKey',
          metadata: { name: 'ci', namespace: 'team' },
          spec: { tenant: 'acme', secretRef: { name: 's', key: 'key' } },
        },
      ],
      secrets: [{ namespace: 'team', name: 's', data: { key } }],
      settings: { replicas: 2 },
      now: new Date('2026-11-21T12:00:00Z'),
    } as unknown as Parameters<typeof compileSnapshot>[0]);
    expect(snapshot.keys).toHaveLength(1);
    const text = snapshotJson(snapshot);
    expect(text).toBe(reference(snapshot));
    expect(snapshotJson(snapshot)).toBe(text); // one serialization per snapshot object
    const parsed = JSON.parse(text) as object;
    expect(contentRevision(parsed)).toBe(snapshot.revision);
    const result = parseSnapshot(parsed);
    expect(result.ok ? [] : result.problems).toEqual([]);
  });
});
