// Runs gpugate for the proxy benchmark with every request-path feature on: API-key identity, model
// peek from the JSON body, route table, LeastRequest with an in-flight limit and queue, active
// health checks, retries, timeouts, Prometheus metrics, the backend header, and one usage event per
// request into a sink: by default one that only counts (the Postgres writer has its own benchmark).
// GPUGATE_BENCH_METERING: `none` for no sink at all; a Postgres URL for the real metering path: the
// batching writer (createMeteringWriter) and the quota manager on one pool of 4, and a quota on the
// bench tenant high enough never to refuse (test/bench/metered.ts).
// GPUGATE_BENCH_TRACING (test/bench/tracing.ts): `off` (default: no tracing, as shipped), `unsampled`
// (the SDK on with sampleRatio 0: every span non-recording), `noop` (every request sampled, spans batched
// and handed to an exporter that discards them), or an OTLP/HTTP traces URL (sampled and exported).
// GPUGATE_WARMUP_REQUESTS / GPUGATE_WARMUP_BUDGET_MS (dataplane/warmup.ts): the data plane's own warm-up
// before `ready` is printed; off unless set, so the other benchmarks measure what they always did.
// Usage: node test/bench/gpugate-runner.ts <port> <upstream-url>[,<url>...] <key-file> [policy] [scrape-ms]
import { writeFileSync } from 'node:fs';
import { ExportResultCode } from '@opentelemetry/core';
import pg from 'pg';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { createQuotaManager, type QuotaManager } from '../../dataplane/metering/quota.ts';
import type { UsageEvent, UsageSink } from '../../dataplane/metering/usage.ts';
import { createMeteringWriter, type MeteringWriter } from '../../dataplane/metering/writer.ts';
import { createDataPlane } from '../../dataplane/server.ts';
import { DEFAULT_WARMUP, warmupOptions } from '../../dataplane/warmup.ts';
import type { TracingOptions } from '../../dataplane/observability/tracing.ts';
import { benchSnapshot } from './bench-snapshot.ts';

const [port, upstream, keyFile, policy, scrapeMs] = process.argv.slice(2);
if (!port || !upstream || !keyFile)
  throw new Error('usage: gpugate-runner.ts <port> <upstream-url> <key-file>');

let events = 0;
let tokens = 0;
const metering = process.env.GPUGATE_BENCH_METERING;
const logger = pino({ level: 'warn' });
const registry = new Registry();
const pool = metering && metering !== 'none' ? new pg.Pool({ connectionString: metering, max: 4 }) : null;
const writer: MeteringWriter | null = pool ? createMeteringWriter({ pool, registry, logger }) : null;
const quota: QuotaManager | null = pool ? createQuotaManager({ pool, registry, logger }) : null;
const counting: UsageSink = {
  record(e: UsageEvent) {
    events++;
    tokens += e.inputTokens + e.outputTokens;
  },
};
const tracingMode = process.env.GPUGATE_BENCH_TRACING ?? 'off';
const discard: NonNullable<TracingOptions['exporter']> = {
  export: (_spans, done) => done({ code: ExportResultCode.SUCCESS }),
  shutdown: async () => undefined,
};
const tracing: TracingOptions | null =
  tracingMode === 'off'
    ? null
    : tracingMode === 'unsampled'
      ? { otlpEndpoint: 'http://127.0.0.1:9/v1/traces', sampleRatio: 0, exporter: discard }
      : tracingMode === 'noop'
        ? { otlpEndpoint: 'http://127.0.0.1:9/v1/traces', sampleRatio: 1, exporter: discard }
        : { otlpEndpoint: tracingMode, sampleRatio: 1 };
const plane = await createDataPlane({
  logger,
  registry,
  tracing,
  ...(metering === 'none' ? {} : { usageSink: writer ?? counting }),
  ...(quota ? { quota } : {}),
  listen: { host: '127.0.0.1', port: Number(port) },
  admin: { host: '127.0.0.1', port: 0, token: 'bench' },
  scrapeIntervalMs: scrapeMs ? Number(scrapeMs) : 1000,
  warmup: warmupOptions({}, process.env, { requests: 0, budgetMs: DEFAULT_WARMUP.budgetMs }),
});
const { snapshot, secret } = benchSnapshot(
  upstream.split(','),
  (policy ?? 'LeastRequest') as 'RoundRobin' | 'LeastRequest' | 'QueueAware',
  quota ? { credits: 1e15, period: 'Monthly' } : null,
);
const result = plane.applySnapshot(snapshot);
if (!result.accepted) throw new Error(`bench snapshot refused: ${JSON.stringify(result.problems)}`);
writeFileSync(keyFile, secret);
const warmedUp = await plane.warmup;
if (warmedUp.state !== 'off') process.stderr.write(`gateway warm-up: ${JSON.stringify(warmedUp)}\n`);
process.stdout.write(`ready ${plane.url} admin ${plane.adminUrl}\n`);
process.on('SIGTERM', () => {
  process.stdout.write(`usage events ${events} tokens ${tokens}\n`);
  void plane
    .close({ drainMs: 1000 })
    .then(async () => {
      await quota?.close();
      await writer?.flushAndClose();
      await pool?.end();
    })
    .then(() => process.exit(0));
});
