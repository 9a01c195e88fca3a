// The data-plane process. Flags override environment variables:
//   --host / GPUGATE_HOST (0.0.0.0)            --port / GPUGATE_PORT (8080)
//   --admin-host / GPUGATE_ADMIN_HOST (0.0.0.0) --admin-port / GPUGATE_ADMIN_PORT (9090)
//   --push-token-file / GPUGATE_PUSH_TOKEN_FILE, or GPUGATE_PUSH_TOKEN: the PUT /config token
//   --snapshot file.json: apply this snapshot at start
//   --instance-id / GPUGATE_INSTANCE_ID: the gateway's name in Via (loop detection)
//   --drain-ms / GPUGATE_DRAIN_MS (30000): how long SIGTERM waits for in-flight requests
//   --access-log on|off, --access-log-level, --access-log-sample, --otlp-endpoint, --trace-sample (and
//     their GPUGATE_* variables, GPUGATE_OTLP_HEADERS): the access log and tracing, see
//     dataplane/observability/options.ts
//   --operator-url / GPUGATE_OPERATOR_URL: ask the operator for the current snapshot at start (push token)
//   --database-url / DATABASE_URL: migrate, then meter usage into this Postgres (flushed on SIGTERM
//     after the drain), enforce quotas with leases, keep async-task affinity there (shared by all
//     replicas), run the scheduled maintenance (partitions, retention, expired tasks and leases) and
//     serve GET /v1/usage and the admin usage routes; none: usage is not recorded, quotas are not
//     enforced, tasks are remembered in memory, and POST /webhook/register answers 503
//   --usage-retention-days / GPUGATE_USAGE_RETENTION_DAYS (90): raw usage events older than this are
//     dropped (daily roll-ups stay); 0 keeps them forever
//   --tls-cert-file / GPUGATE_TLS_CERT_FILE and --tls-key-file / GPUGATE_TLS_KEY_FILE (both or neither):
//     serve HTTPS on the public port with this PEM pair, re-read every --tls-reload-ms /
//     GPUGATE_TLS_RELOAD_MS (10000; 0: never) and swapped in when it changes; the admin port stays HTTP
//   --warmup-requests / GPUGATE_WARMUP_REQUESTS (2000; 0: off) and --warmup-budget-ms /
//     GPUGATE_WARMUP_BUDGET_MS (2000): before /readyz says ready, serve this many requests through a
//     private plane on loopback, stopping at the budget (dataplane/warmup.ts)
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { DEFAULT_RETENTION_DAYS } from './metering/maintenance.ts';
import { openMetering, type MeteringRuntime } from './metering/runtime.ts';
import { createPgRegistrationStore } from './registration/store.ts';
import { bootstrapFromOperator } from './admin/bootstrap.ts';
import { createDataPlane } from './server.ts';
import { DATAPLANE_NODE_FLAGS, missingNodeFlags } from './node-flags.ts';
import {
  OBSERVABILITY_FLAGS,
  ObservabilityConfigError,
  observabilityOptions,
} from './observability/options.ts';
import { TlsConfigError } from './tls/certs.ts';
import { WARMUP_FLAGS, WarmupConfigError, warmupOptions } from './warmup.ts';

const { values } = parseArgs({
  options: {
    host: { type: 'string' },
    port: { type: 'string' },
    'admin-host': { type: 'string' },
    'admin-port': { type: 'string' },
    'push-token-file': { type: 'string' },
    snapshot: { type: 'string' },
    'instance-id': { type: 'string' },
    'drain-ms': { type: 'string' },
    'operator-url': { type: 'string' },
    'database-url': { type: 'string' },
    'usage-retention-days': { type: 'string' },
    'tls-cert-file': { type: 'string' },
    'tls-key-file': { type: 'string' },
    'tls-reload-ms': { type: 'string' },
    ...OBSERVABILITY_FLAGS,
    ...WARMUP_FLAGS,
    help: { type: 'boolean', short: 'h' },
  },
});

if (values.help) {
  process.stdout.write(
    'usage: main.ts [--host H] [--port P] [--admin-host H] [--admin-port P] [--push-token-file F]\n' +
      '               [--access-log on|off] [--access-log-level L] [--access-log-sample 0..1]\n' +
      '               [--otlp-endpoint URL [--trace-sample 0..1]]\n' +
      '               [--snapshot snapshot.json] [--instance-id ID] [--drain-ms MS]\n' +
      '               [--database-url postgres://...] [--usage-retention-days N]\n' +
      '               [--tls-cert-file tls.crt --tls-key-file tls.key [--tls-reload-ms MS]]\n' +
      '               [--warmup-requests N (0: off)] [--warmup-budget-ms MS]\n',
  );
  process.exit(0);
}

const env = process.env;
const logger = pino({ level: env.LOG_LEVEL ?? 'info' });

let observability: ReturnType<typeof observabilityOptions>;
let warmup: ReturnType<typeof warmupOptions>;
try {
  observability = observabilityOptions(values, env);
  warmup = warmupOptions(values, env);
} catch (err) {
  if (!(err instanceof ObservabilityConfigError) && !(err instanceof WarmupConfigError)) throw err;
  logger.fatal(err.message);
  process.exit(2);
}

function intOf(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) {
    logger.fatal({ [name]: value }, `${name} must be a non-negative integer`);
    process.exit(2);
  }
  return n;
}

function pushToken(): string | null {
  const file = values['push-token-file'] ?? env.GPUGATE_PUSH_TOKEN_FILE;
  if (file) return readFileSync(file, 'utf8').trim();
  const token = env.GPUGATE_PUSH_TOKEN;
  return token ? token : null;
}

const missingFlags = missingNodeFlags(process.execArgv);
if (missingFlags.length > 0) {
  logger.warn(
    { missing: missingFlags },
    `started without the data plane's Node.js flags (dataplane/node-flags.ts): large request and response bodies can grow its memory by about 100 MiB; run node ${DATAPLANE_NODE_FLAGS.join(' ')} dataplane/main.ts`,
  );
}

const token = pushToken();
if (token === null)
  logger.warn('no push token (GPUGATE_PUSH_TOKEN or --push-token-file): PUT /config is disabled');

const databaseUrl = values['database-url'] ?? env.DATABASE_URL;
const registry = new Registry();
let metering: MeteringRuntime | null = null;
if (databaseUrl) {
  metering = await openMetering({
    databaseUrl,
    registry,
    logger,
    retentionDays: intOf(
      'usage-retention-days',
      values['usage-retention-days'] ?? env.GPUGATE_USAGE_RETENTION_DAYS,
      DEFAULT_RETENTION_DAYS,
    ),
  });
}

const tlsCertFile = values['tls-cert-file'] ?? env.GPUGATE_TLS_CERT_FILE;
const tlsKeyFile = values['tls-key-file'] ?? env.GPUGATE_TLS_KEY_FILE;
if (Boolean(tlsCertFile) !== Boolean(tlsKeyFile)) {
  logger.fatal(
    `TLS needs both --tls-cert-file (GPUGATE_TLS_CERT_FILE) and --tls-key-file (GPUGATE_TLS_KEY_FILE); only ${tlsCertFile ? 'the certificate' : 'the key'} was given`,
  );
  process.exit(2);
}
const tls =
  tlsCertFile && tlsKeyFile
    ? {
        certFile: tlsCertFile,
        keyFile: tlsKeyFile,
        reloadIntervalMs: intOf(
          'tls-reload-ms',
          values['tls-reload-ms'] ?? env.GPUGATE_TLS_RELOAD_MS,
          10_000,
        ),
      }
    : undefined;

const plane = await createDataPlane({
  logger,
  registry,
  accessLog: observability.accessLog,
  tracing: observability.tracing,
  warmup,
  ...(metering
    ? {
        usageSink: metering.writer,
        quota: metering.quota,
        taskStore: metering.tasks,
        usageDb: metering.pool,
        registrationStore: createPgRegistrationStore(metering.pool),
      }
    : {}),
  listen: {
    host: values.host ?? env.GPUGATE_HOST ?? '0.0.0.0',
    port: intOf('port', values.port ?? env.GPUGATE_PORT, 8080),
  },
  admin: {
    host: values['admin-host'] ?? env.GPUGATE_ADMIN_HOST ?? '0.0.0.0',
    port: intOf('admin-port', values['admin-port'] ?? env.GPUGATE_ADMIN_PORT, 9090),
    token,
  },
  ...((values['instance-id'] ?? env.GPUGATE_INSTANCE_ID)
    ? { instanceId: values['instance-id'] ?? env.GPUGATE_INSTANCE_ID }
    : {}),
  ...(tls ? { tls } : {}),
}).catch((err: unknown) => {
  if (!(err instanceof TlsConfigError)) throw err;
  logger.fatal(err.message);
  process.exit(2);
});

if (values.snapshot) {
  const result = plane.applySnapshot(JSON.parse(readFileSync(values.snapshot, 'utf8')) as unknown);
  if (!result.accepted) {
    logger.fatal({ problems: result.problems, file: values.snapshot }, 'the initial snapshot was refused');
    await plane.close({ drainMs: 0 });
    process.exit(1);
  }
}

const operatorUrl = values['operator-url'] ?? env.GPUGATE_OPERATOR_URL;
const bootstrapAbort = new AbortController();
if (operatorUrl && token !== null) {
  void bootstrapFromOperator({
    operatorUrl,
    token,
    logger,
    applySnapshot: plane.applySnapshot,
    revision: plane.revision,
    signal: bootstrapAbort.signal,
  });
}

const drainMs = intOf('drain-ms', values['drain-ms'] ?? env.GPUGATE_DRAIN_MS, 30_000);
let stopping = false;
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    bootstrapAbort.abort();
    logger.info({ signal, drainMs }, 'stopping: no new connections, draining in-flight requests');
    plane
      .close({ drainMs })
      .then(async () => {
        if (!metering) return;
        const outcome = await metering.close();
        logger.info(outcome, 'usage flushed');
      })
      .then(
        () => process.exit(0),
        (err: unknown) => {
          logger.error({ err }, 'error while stopping');
          process.exit(1);
        },
      );
  });
}
