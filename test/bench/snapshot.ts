// Snapshot cost at scale: compile time, size and data-plane validation time for 100 GpuBackends,
// 1,000 Tenants and 10,000 ApiKeys (the operator issue's benchmark size). Not a test; prints figures.
//   tsx test/bench/snapshot.ts [keys]
import { gzipSync } from 'node:zlib';
import { generateApiKey } from '../../dataplane/auth/keys.ts';
import { parseSnapshot } from '../../dataplane/config/validate.ts';
import type { ApiKey, GpuBackend, Tenant } from '../../operator/api/v1alpha1/index.ts';
import { compileSnapshot, type SecretData } from '../../operator/snapshot/compile.ts';

const KEYS = Number(process.argv[2] ?? 10_000);
const TENANTS = Math.max(1, Math.round(KEYS / 10));
const BACKENDS = Math.max(1, Math.round(KEYS / 100));
const api = 'gpugate.io/v1alpha1' as const;

const gpuBackends: GpuBackend[] = Array.from({ length: BACKENDS }, (_, i) => ({
  apiVersion: api,
  kind: 'GpuBackend',
  metadata: { name: `backend-${i}`, namespace: 'gpu' },
  spec: {
    models: [`model-${i}`],
    endpoints: Array.from({ length: 4 }, (_, j) => ({
      url: `http://10.0.${i % 250}.${j + 1}:8000`,
      weight: 1,
      disabled: false,
    })),
  } as GpuBackend['spec'],
}));
const tenants: Tenant[] = Array.from({ length: TENANTS }, (_, i) => ({
  apiVersion: api,
  kind: 'Tenant',
  metadata: { name: `tenant-${i}`, namespace: 'tenants' },
  spec: { limits: { requestsPerMinute: 600 }, quota: { credits: 1000, period: 'Monthly' } } as Tenant['spec'],
}));
const secrets: SecretData[] = [];
const apiKeys: ApiKey[] = Array.from({ length: KEYS }, (_, i) => {
  const name = `key-${i}`;
  secrets.push({ namespace: 'tenants', name: `${name}-gpugate-key`, data: { key: generateApiKey() } });
  return {
    apiVersion: api,
    kind: 'ApiKey',
    metadata: { name, namespace: 'tenants' },
    spec: { tenant: `tenant-${i % TENANTS}` } as ApiKey['spec'],
  };
});

const input = { gpuBackends, tenants, apiKeys, secrets, settings: { replicas: 3 }, now: new Date() };
compileSnapshot(input); // warm up
const runs = 5;
let compileMs = Infinity;
let result = compileSnapshot(input);
for (let i = 0; i < runs; i++) {
  const t = performance.now();
  result = compileSnapshot(input);
  compileMs = Math.min(compileMs, performance.now() - t);
}
const json = JSON.stringify(result.snapshot);
let validateMs = Infinity;
for (let i = 0; i < runs; i++) {
  const t = performance.now();
  const parsed = parseSnapshot(JSON.parse(json));
  validateMs = Math.min(validateMs, performance.now() - t);
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.problems));
}
console.log(
  JSON.stringify(
    {
      backends: BACKENDS,
      tenants: TENANTS,
      keys: KEYS,
      problems: result.problems.length,
      compileMsBestOf5: Math.round(compileMs),
      snapshotBytes: json.length,
      snapshotGzipBytes: gzipSync(json).length,
      bytesPerKey: Math.round(json.length / KEYS),
      parseAndValidateMsBestOf5: Math.round(validateMs),
    },
    null,
    2,
  ),
);
