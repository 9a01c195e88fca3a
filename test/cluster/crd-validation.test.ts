// The API server validates custom resources against their CRD's OpenAPI schema and CEL rules and answers with
// its own message. The CRD here is a small one of the harness's own; gpugate's CRDs get fixture tests of their
// own on top of this harness.
import { beforeAll, describe, expect, it } from 'vitest';
import { kubectl, newNamespace, waitUntil } from './harness.ts';

const group = 'harness.gpugate.test';

const crd = {
  apiVersion: 'apiextensions.k8s.io/v1',
  kind: 'CustomResourceDefinition',
  metadata: { name: `modelpools.${group}` },
  spec: {
    group,
    scope: 'Namespaced',
    names: { plural: 'modelpools', singular: 'modelpool', kind: 'ModelPool' },
    versions: [
      {
        name: 'v1',
        served: true,
        storage: true,
        schema: {
          openAPIV3Schema: {
            type: 'object',
            properties: {
              spec: {
                type: 'object',
                required: ['gpusPerReplica'],
                properties: {
                  gpusPerReplica: { type: 'integer', minimum: 1, maximum: 8 },
                  balancing: { type: 'string', enum: ['RoundRobin', 'LeastRequest'] },
                  minReplicas: { type: 'integer', minimum: 0 },
                  maxReplicas: { type: 'integer', minimum: 0 },
                },
                'x-kubernetes-validations': [
                  {
                    rule: '!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas',
                    message: 'minReplicas must not exceed maxReplicas',
                  },
                ],
              },
            },
          },
        },
      },
    ],
  },
};

function pool(name: string, spec: object): string {
  return JSON.stringify({ apiVersion: `${group}/v1`, kind: 'ModelPool', metadata: { name }, spec });
}

describe('CRD validation by the API server', () => {
  let namespace: string;
  beforeAll(async () => {
    namespace = await newNamespace('crd');
    await kubectl(['apply', '--server-side', '-f', '-'], { input: JSON.stringify(crd) });
    await waitUntil('the CRD Established', async () => {
      const status = await kubectl([
        'get',
        'crd',
        crd.metadata.name,
        '-o',
        'jsonpath={.status.conditions[?(@.type=="Established")].status}',
      ]);
      return status === 'True';
    });
  });

  const create = (input: string): Promise<string> =>
    kubectl(['create', '-n', namespace, '-f', '-'], { input });

  it('accepts a custom resource that matches the schema', async () => {
    await create(
      pool('valid', { gpusPerReplica: 2, balancing: 'LeastRequest', minReplicas: 1, maxReplicas: 3 }),
    );
    const stored = JSON.parse(
      await kubectl(['get', 'modelpool', 'valid', '-n', namespace, '-o', 'json']),
    ) as {
      spec: { gpusPerReplica: number };
    };
    expect(stored.spec.gpusPerReplica).toBe(2);
  });

  it('rejects values outside the OpenAPI bounds and enums with the server message', async () => {
    await expect(create(pool('too-many-gpus', { gpusPerReplica: 9, balancing: 'Random' }))).rejects.toThrow(
      /spec\.gpusPerReplica: Invalid value: 9: spec\.gpusPerReplica in body should be less than or equal to 8/,
    );
    await expect(create(pool('bad-policy', { gpusPerReplica: 1, balancing: 'Random' }))).rejects.toThrow(
      /spec\.balancing: Unsupported value: "Random": supported values: "RoundRobin", "LeastRequest"/,
    );
    await expect(create(pool('no-gpus', {}))).rejects.toThrow(/spec\.gpusPerReplica: Required value/);
  });

  it('rejects a resource that breaks an x-kubernetes-validations (CEL) rule with the rule message', async () => {
    await expect(
      create(pool('inverted', { gpusPerReplica: 1, minReplicas: 4, maxReplicas: 2 })),
      // Before Kubernetes 1.36 the server put `"object": ` in front of the rule message.
    ).rejects.toThrow(
      /The ModelPool "inverted" is invalid: spec: Invalid value: (?:"object": )?minReplicas must not exceed maxReplicas/,
    );
  });
});
