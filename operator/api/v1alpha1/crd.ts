// Turns a KindDefinition into a CustomResourceDefinition object (apiextensions.k8s.io/v1).
import { FORMAT_MESSAGE, GROUP, PATTERN_MESSAGE, VERSION, type KindDefinition } from './common.ts';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** OpenAPI formats and the names Kubernetes' CEL format library (`format.<name>()`) gives them. */
const CEL_FORMATS: Record<string, string> = { 'date-time': 'datetime' };

/** TypeBox emits JSON Schema; keep only what a structural OpenAPI v3 CRD schema accepts. */
export function toStructural(schema: unknown): Json {
  const plain = JSON.parse(JSON.stringify(schema)) as Json;
  const walk = (node: Json): Json => {
    if (Array.isArray(node)) return node.map(walk);
    if (node === null || typeof node !== 'object') return node;
    const out: { [key: string]: Json } = {};
    for (const [key, value] of Object.entries(node)) {
      if (key === '$id' || key === '$schema' || key === PATTERN_MESSAGE || key === FORMAT_MESSAGE) continue;
      if (key === 'additionalProperties' && value === false) continue;
      if (key === 'required' && Array.isArray(value) && value.length === 0) continue;
      out[key] = walk(value);
    }
    const message = node[PATTERN_MESSAGE];
    if (typeof message === 'string' && typeof out.pattern === 'string') {
      // The pattern becomes a CEL rule whose message says what is wanted (common.ts PATTERN_MESSAGE).
      if (out.pattern.includes("'")) throw new Error(`pattern ${out.pattern} cannot be a CEL raw string`);
      asRule(out, 'pattern', { rule: `self.matches(r'${out.pattern}')`, messageExpression: message });
    }
    const formatMessage = node[FORMAT_MESSAGE];
    if (typeof formatMessage === 'string' && typeof out.format === 'string') {
      // The format becomes a rule of Kubernetes' CEL format library with a message (common.ts FORMAT_MESSAGE).
      const name = CEL_FORMATS[out.format];
      if (!name) throw new Error(`format ${out.format} has no CEL format library counterpart here`);
      asRule(out, 'format', {
        rule: `!format.${name}().validate(self).hasValue()`,
        messageExpression: formatMessage,
      });
    }
    return out;
  };
  return walk(plain);
}

/** States a node's `keyword` as a CEL rule instead, placed before the node's own rules. */
function asRule(
  node: { [key: string]: Json },
  keyword: 'pattern' | 'format',
  rule: { rule: string; messageExpression: string },
): void {
  const existing = Array.isArray(node['x-kubernetes-validations']) ? node['x-kubernetes-validations'] : [];
  delete node[keyword];
  node['x-kubernetes-validations'] = [rule, ...existing];
}

export function crdName(def: KindDefinition): string {
  return `${def.plural}.${GROUP}`;
}

export function buildCrd(def: KindDefinition): Record<string, unknown> {
  const rootValidations =
    def.rules && def.rules.length > 0 ? { 'x-kubernetes-validations': def.rules as unknown as Json } : {};
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: {
      name: crdName(def),
      labels: { 'app.kubernetes.io/name': 'gpugate', 'app.kubernetes.io/part-of': 'gpugate' },
    },
    spec: {
      group: GROUP,
      names: {
        kind: def.kind,
        listKind: `${def.kind}List`,
        plural: def.plural,
        singular: def.singular,
        shortNames: def.shortNames,
        categories: ['gpugate'],
      },
      scope: 'Namespaced',
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: def.printerColumns as unknown as Json,
          schema: {
            openAPIV3Schema: {
              type: 'object',
              description: def.description,
              required: ['spec'],
              properties: {
                apiVersion: {
                  type: 'string',
                  description:
                    'APIVersion defines the versioned schema of this representation of an object; gpugate.io/v1alpha1.',
                },
                kind: { type: 'string', description: `Kind is the type of this object; ${def.kind}.` },
                metadata: { type: 'object' },
                spec: toStructural(def.spec),
                status: toStructural(def.status),
              },
              ...rootValidations,
            },
          },
        },
      ],
    },
  };
}
