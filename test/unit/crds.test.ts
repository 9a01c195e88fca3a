import { mkdtempSync, readFileSync, readdirSync, writeFileSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import Type from 'typebox';
import { Value } from 'typebox/value';
import { parse, parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import { CRD_DIRS, findDrift, renderCrds } from '../../operator/api/v1alpha1/generate.ts';
import { KINDS } from '../../operator/api/v1alpha1/index.ts';
import { ApiKeySpec } from '../../operator/api/v1alpha1/apikey.ts';
import { DateTime, FORMAT_MESSAGE } from '../../operator/api/v1alpha1/common.ts';
import { toStructural } from '../../operator/api/v1alpha1/crd.ts';

const repo = join(import.meta.dirname, '..', '..');

type Node = Record<string, unknown>;

function crdSchema(plural: string): Node {
  const text = readFileSync(join(repo, 'crds', `${plural}.gpugate.io.yaml`), 'utf8');
  const crd = parse(text) as { spec: { versions: { schema: { openAPIV3Schema: Node } }[] } };
  return crd.spec.versions[0]!.schema.openAPIV3Schema;
}

/** Every schema node below spec and status, with its path. */
function* walk(node: Node, path: string): Generator<[string, Node]> {
  yield [path, node];
  for (const [name, child] of Object.entries((node.properties as Record<string, Node>) ?? {})) {
    yield* walk(child, `${path}.${name}`);
  }
  if (node.items) yield* walk(node.items as Node, `${path}[]`);
  if (node.additionalProperties && typeof node.additionalProperties === 'object') {
    yield* walk(node.additionalProperties as Node, `${path}{}`);
  }
}

describe('generated CRDs', () => {
  it('match their TypeScript source in crds/ and in the chart', () => {
    expect(findDrift()).toEqual([]);
  });

  it('report drift when a generated file is edited by hand', () => {
    const copy = mkdtempSync(join(tmpdir(), 'gpugate-drift-'));
    for (const dir of CRD_DIRS) cpSync(join(repo, dir), join(copy, dir), { recursive: true });
    const victim = join(copy, 'crds', 'tenants.gpugate.io.yaml');
    writeFileSync(victim, readFileSync(victim, 'utf8').replace('minimum: 0', 'minimum: 1'));
    expect(findDrift(copy)).toEqual(['crds/tenants.gpugate.io.yaml: differs from the TypeScript source']);
  });

  it.each(KINDS.map((k) => [k.kind, k.plural]))(
    '%s: every field has a kubectl-explain description',
    (_kind, plural) => {
      const schema = crdSchema(plural);
      const missing: string[] = [];
      for (const part of ['spec', 'status']) {
        for (const [path, node] of walk((schema.properties as Record<string, Node>)[part]!, part)) {
          const d = node.description;
          if (typeof d !== 'string' || d.length < 8) missing.push(path);
        }
      }
      expect(missing).toEqual([]);
    },
  );

  it.each(KINDS.map((k) => [k.kind, k.plural]))(
    '%s: the schema is structural (a type on every node)',
    (_kind, plural) => {
      const untyped: string[] = [];
      for (const [path, node] of walk(crdSchema(plural), 'root')) {
        if (node.type === undefined && node['x-kubernetes-int-or-string'] !== true) untyped.push(path);
        if (node.additionalProperties === false) untyped.push(`${path} (additionalProperties: false)`);
      }
      expect(untyped).toEqual([]);
    },
  );

  it('declare short names, the gpugate category, a status subresource and printer columns', () => {
    for (const [name, text] of renderCrds()) {
      const crd = parse(text) as {
        spec: { names: { shortNames: string[]; categories: string[] }; versions: Node[] };
      };
      expect(crd.spec.names.shortNames.length, name).toBeGreaterThan(0);
      expect(crd.spec.names.categories).toContain('gpugate');
      expect(crd.spec.versions[0]!.subresources).toEqual({ status: {} });
      expect((crd.spec.versions[0]!.additionalPrinterColumns as unknown[]).length).toBeGreaterThanOrEqual(4);
    }
  });

  it('carry CEL rules for the cross-field constraints', () => {
    const all = [...renderCrds().values()].join('\n');
    for (const needle of [
      'a GpuBackend needs at least one of endpoints, deployment or registration',
      'must be an http:// or https:// URL',
      'set exactly one of jwksUrl or hsSecretRef',
      'tenant is immutable',
      'isCIDR(self)',
      'connect must not be longer than total',
    ]) {
      expect(all).toContain(needle);
    }
  });
});

describe('formats with a message', () => {
  it('become a rule of the CEL format library in the CRD, and TypeBox still checks them (standalone mode)', () => {
    const node = toStructural(DateTime('When it ends.')) as Node;
    expect(node.format).toBeUndefined();
    expect(node[FORMAT_MESSAGE]).toBeUndefined();
    expect(node['x-kubernetes-validations']).toEqual([
      {
        rule: '!format.datetime().validate(self).hasValue()',
        messageExpression: expect.stringContaining('such as 2030-01-31T23:59:59Z'),
      },
    ]);
    const spec = (expiresAt: string) => ({ tenant: 'acme', disabled: false, expiresAt });
    expect(Value.Check(ApiKeySpec, spec('2030-01-31T18:00:00-05:00'))).toBe(true);
    const errors = [...Value.Errors(ApiKeySpec, spec('tomorrow'))];
    expect(errors.map((e) => e.instancePath)).toEqual(['/expiresAt']);
  });

  it('refuse a format the CEL format library has no name for here', () => {
    const email = Type.String({ format: 'email', [FORMAT_MESSAGE]: "'must be an address'" });
    expect(() => toStructural(email)).toThrow('format email has no CEL format library counterpart');
  });
});

describe('examples/', () => {
  // The OpenAPI part of validation (types, enums, patterns, bounds, required); the CEL rules run on
  // the real API server in test/cluster.
  const ajv = new Ajv({ strict: false, allErrors: true, useDefaults: true, validateFormats: false });
  const validators = new Map(KINDS.map((k) => [k.kind, ajv.compile(crdSchema(k.plural))]));
  const files = ['', 'cluster']
    .flatMap((dir) => readdirSync(join(repo, 'examples', dir)).map((f) => join(dir, f)))
    .filter((f) => f.endsWith('.yaml'));

  it('has manifests to check', () => {
    expect(files.length).toBeGreaterThanOrEqual(4);
  });

  it.each(files)('%s validates against the generated CRD schemas', (file) => {
    const docs = parseAllDocuments(readFileSync(join(repo, 'examples', file), 'utf8')).map(
      (d) => d.toJS() as Node,
    );
    for (const doc of docs) {
      if (doc.kind === 'Secret') continue;
      const validate = validators.get(doc.kind as string);
      expect(validate, `unknown kind ${String(doc.kind)}`).toBeDefined();
      const ok = validate!(doc);
      expect(validate!.errors ?? [], `${file} ${String(doc.kind)}`).toEqual([]);
      expect(ok).toBe(true);
    }
  });

  it('a manifest with a wrong enum value fails schema validation naming the field', () => {
    const validate = validators.get('GpuBackend')!;
    const bad = {
      apiVersion: 'gpugate.io/v1alpha1',
      kind: 'GpuBackend',
      metadata: { name: 'x' },
      spec: { endpoints: [{ url: 'http://a:1' }], balancing: { policy: 'Random' } },
    };
    expect(validate(bad)).toBe(false);
    expect(validate.errors?.map((e) => e.instancePath)).toContain('/spec/balancing/policy');
  });
});
