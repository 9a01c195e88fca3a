// The snapshot the benchmarks run gpugate with: one backend (the shared upstream), one tenant, one
// API key, every request-path feature on: identity, model peek, two routes (longest prefix with a
// route cost), LeastRequest with an in-flight limit and wait queue, active health checks, retries,
// timeouts, pricing (credits in every usage event), the backend header. Usage: tsx test/bench/bench-snapshot.ts <upstream-url> <out.json> <key-file>
import { writeFileSync } from 'node:fs';
import type { Tenant } from '../../dataplane/config/snapshot.ts';
import { apiKey, backend, snapshot, tenant } from '../dataplane/harness.ts';

export function benchSnapshot(
  upstreamUrls: string | readonly string[],
  policy: 'RoundRobin' | 'LeastRequest' | 'QueueAware' = 'LeastRequest',
  /** A quota on the tenant (enforced when the data plane has a quota manager). */
  quota: Tenant['quota'] = null,
) {
  const key = apiKey('bench');
  const snap = snapshot({
    backends: [
      backend('bench/llm', typeof upstreamUrls === 'string' ? [upstreamUrls] : [...upstreamUrls], {
        models: ['bench-model'],
        balancing: {
          policy,
          maxInflightPerEndpoint: 512,
          maxQueue: 1024,
          queueTimeoutMs: 5000,
          metricsPath: '/metrics',
        },
        routes: [
          { pathPrefix: '/v1', methods: [], public: false },
          { pathPrefix: '/v1/chat/completions', methods: ['POST'], public: false, cost: 0.5 },
        ],
        healthCheck: {
          path: '/health',
          intervalMs: 1000,
          timeoutMs: 500,
          healthyThreshold: 1,
          unhealthyThreshold: 3,
        },
        retries: { attempts: 2, retryOnStatus: [503] },
        timeouts: { connectMs: 2000, firstByteMs: 30_000, totalMs: 300_000 },
        pricing: { perRequest: 0.1, perInputToken: 0.001, perOutputToken: 0.002 },
        maxRequestBytes: 4 * 1024 * 1024 * 1024,
      }),
    ],
    tenants: [tenant('bench', { quota })],
    keys: [key.key],
  });
  return { snapshot: snap, secret: key.secret };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [url, out, keyFile] = process.argv.slice(2);
  if (!url || !out || !keyFile) {
    process.stderr.write('usage: bench-snapshot.ts <upstream-url> <out.json> <key-file>\n');
    process.exit(2);
  }
  const { snapshot: snap, secret } = benchSnapshot(url);
  writeFileSync(out, JSON.stringify(snap));
  writeFileSync(keyFile, secret);
}
