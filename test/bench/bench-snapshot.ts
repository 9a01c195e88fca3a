// Writes the snapshot the proxy benchmark runs gpugate with: one backend (the shared upstream),
// one tenant, one API key, every request-path feature on (identity, model peek, metrics, usage
// events, backend header). Usage: tsx test/bench/bench-snapshot.ts <upstream-url> <out.json> <key-file>
import { writeFileSync } from 'node:fs';
import { apiKey, backend, snapshot, tenant } from '../dataplane/harness.ts';

export function benchSnapshot(
  upstreamUrl: string,
  policy: 'RoundRobin' | 'LeastRequest' | 'QueueAware' = 'LeastRequest',
) {
  const key = apiKey('bench');
  const snap = snapshot({
    backends: [
      backend('bench/llm', [upstreamUrl], {
        models: ['bench-model'],
        balancing: {
          policy,
          maxInflightPerEndpoint: 0,
          maxQueue: 0,
          queueTimeoutMs: 1000,
          metricsPath: '/metrics',
        },
        routes: [{ pathPrefix: '/v1', methods: [], public: false }],
      }),
    ],
    tenants: [tenant('bench')],
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
