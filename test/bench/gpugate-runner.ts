// Runs gpugate for the proxy benchmark with every request-path feature on: API-key identity, model
// peek from the JSON body, route table, LeastRequest with an in-flight limit and queue, active
// health checks, retries, timeouts, Prometheus metrics, the backend header, and one usage event per
// request into a sink (counting only: the Postgres writer has its own benchmark).
// Usage: node test/bench/gpugate-runner.ts <port> <upstream-url>[,<url>...] <key-file> [policy] [scrape-ms]
import { writeFileSync } from 'node:fs';
import { pino } from 'pino';
import type { UsageEvent } from '../../dataplane/metering/usage.ts';
import { createDataPlane } from '../../dataplane/server.ts';
import { benchSnapshot } from './bench-snapshot.ts';

const [port, upstream, keyFile, policy, scrapeMs] = process.argv.slice(2);
if (!port || !upstream || !keyFile)
  throw new Error('usage: gpugate-runner.ts <port> <upstream-url> <key-file>');

let events = 0;
let tokens = 0;
const plane = await createDataPlane({
  logger: pino({ level: 'warn' }),
  usageSink: {
    record(e: UsageEvent) {
      events++;
      tokens += e.inputTokens + e.outputTokens;
    },
  },
  listen: { host: '127.0.0.1', port: Number(port) },
  admin: { host: '127.0.0.1', port: 0, token: 'bench' },
  scrapeIntervalMs: scrapeMs ? Number(scrapeMs) : 1000,
});
const { snapshot, secret } = benchSnapshot(
  upstream.split(','),
  (policy ?? 'LeastRequest') as 'RoundRobin' | 'LeastRequest' | 'QueueAware',
);
const result = plane.applySnapshot(snapshot);
if (!result.accepted) throw new Error(`bench snapshot refused: ${JSON.stringify(result.problems)}`);
writeFileSync(keyFile, secret);
process.stdout.write(`ready ${plane.url} admin ${plane.adminUrl}\n`);
process.on('SIGTERM', () => {
  process.stdout.write(`usage events ${events} tokens ${tokens}\n`);
  void plane.close({ drainMs: 1000 }).then(() => process.exit(0));
});
