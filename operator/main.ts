// The operator process. Credentials: KUBECONFIG when set, otherwise the pod's service account.
// Flags override environment variables:
//   --namespace / GPUGATE_WATCH_NAMESPACE          watch one namespace only (default: every namespace)
//   --lease-namespace / POD_NAMESPACE (default "gpugate-system"), --lease-name (gpugate-operator)
//   --lease-duration-ms / GPUGATE_LEASE_DURATION_MS (15000)
//   --push-token-secret / GPUGATE_PUSH_TOKEN_SECRET  namespace/name[:key] of the push token (key "token")
//   --dataplane-service / GPUGATE_DATAPLANE_SERVICE  namespace/name of the shared data plane's Service;
//                                                    its EndpointSlices' ready addresses get pushes
//   --dataplane-admin-port / GPUGATE_DATAPLANE_ADMIN_PORT (9090): used when the slice has no "admin" port
//   --dataplane-url / GPUGATE_DATAPLANE_URLS (comma-separated): data-plane admin URLs pushed to as well
//                                                    (data planes outside the cluster; the test tier)
//   --listen / GPUGATE_OPERATOR_LISTEN (0.0.0.0:8082): GET /snapshot, /fleet, /healthz, /readyz, /metrics
//   --gateway-admin / GPUGATE_GATEWAY_ADMINS (comma-separated) ENDPOINT_URL=ADMIN_URL: a backend endpoint
//     that is itself a gpugate has its admin API there; GET /fleet includes its view
//   --gateway-admin-token-file / GPUGATE_GATEWAY_ADMIN_TOKEN: the chained gateways' admin token
//     (default: our push token)
//   --trusted-proxies / GPUGATE_TRUSTED_PROXIES (comma-separated CIDRs): peers (the ingress) whose
//     X-Forwarded-For names the client; without it every client behind an ingress shares one address
//   --sidecar-image / GPUGATE_SIDECAR_IMAGE: the data-plane image injected for `dataplane: sidecar`
//   --sidecar-token-secret / GPUGATE_SIDECAR_TOKEN_SECRET: Secret name (backend's namespace) mounted in sidecars
//   DATABASE_URL: read tenants' usage from the metering tables; --usage-interval-ms (30000)
//     and self-registered endpoints (registered_endpoints); --registration-interval-ms (5000) at the latest
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { pino } from 'pino';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { parseChainSpecs, type ChainTargets } from './aggregate/aggregate.ts';
import { compileCidrs } from '../dataplane/auth/cidr.ts';
import { startOperator } from './controllers/manager.ts';
import { startOperatorServer } from './server.ts';

const { values } = parseArgs({
  options: {
    namespace: { type: 'string' },
    'lease-namespace': { type: 'string' },
    'lease-name': { type: 'string' },
    'lease-duration-ms': { type: 'string' },
    'push-token-secret': { type: 'string' },
    'dataplane-service': { type: 'string' },
    'dataplane-admin-port': { type: 'string' },
    'dataplane-url': { type: 'string', multiple: true },
    listen: { type: 'string' },
    'gateway-admin': { type: 'string', multiple: true },
    'gateway-admin-token-file': { type: 'string' },
    'sidecar-image': { type: 'string' },
    'sidecar-token-secret': { type: 'string' },
    'usage-interval-ms': { type: 'string' },
    'registration-interval-ms': { type: 'string' },
    'trusted-proxies': { type: 'string' },
    identity: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  process.stdout.write('usage: node operator/main.ts [flags]; see the top of operator/main.ts\n');
  process.exit(0);
}

const env = process.env;
const logger = pino({ name: 'gpugate-operator', level: env.LOG_LEVEL ?? 'info' });

function fail(message: string): never {
  logger.fatal(message);
  process.exit(2);
}
function nsName(
  flag: string,
  raw: string | undefined,
): { namespace: string; name: string; key?: string } | undefined {
  if (!raw) return undefined;
  const m = /^([a-z0-9-]+)\/([a-z0-9.-]+)(?::([-._a-zA-Z0-9]+))?$/.exec(raw);
  if (!m) fail(`${flag} must be namespace/name, got ${JSON.stringify(raw)}`);
  return { namespace: m[1]!, name: m[2]!, ...(m[3] ? { key: m[3] } : {}) };
}
function int(flag: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0)
    fail(`${flag} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return n;
}

const kc = new KubeConfig();
kc.loadFromDefault();
const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: 'gpugate_operator_' });

const tokenSecret = nsName(
  '--push-token-secret',
  values['push-token-secret'] ?? env.GPUGATE_PUSH_TOKEN_SECRET,
);
if (!tokenSecret) fail('--push-token-secret (namespace/name of the push token Secret) is required');
const dpService = nsName('--dataplane-service', values['dataplane-service'] ?? env.GPUGATE_DATAPLANE_SERVICE);
const dpUrls = [
  ...(values['dataplane-url'] ?? []),
  ...(env.GPUGATE_DATAPLANE_URLS ?? '').split(',').filter((u) => u.trim() !== ''),
].map((u) => u.trim());
const [listenHost, listenPort] = (() => {
  const raw = values.listen ?? env.GPUGATE_OPERATOR_LISTEN ?? '0.0.0.0:8082';
  const i = raw.lastIndexOf(':');
  return [raw.slice(0, i) || '0.0.0.0', int('--listen port', raw.slice(i + 1), 8082)] as const;
})();
const gatewayAdmins = [
  ...(values['gateway-admin'] ?? []),
  ...(env.GPUGATE_GATEWAY_ADMINS ?? '').split(',').filter((u) => u.trim() !== ''),
];
const gatewayTokenFile = values['gateway-admin-token-file'];
const gatewayToken = ((): string | null => {
  if (!gatewayTokenFile) return env.GPUGATE_GATEWAY_ADMIN_TOKEN || null;
  try {
    return readFileSync(gatewayTokenFile, 'utf8').trim();
  } catch (err) {
    fail(`--gateway-admin-token-file ${gatewayTokenFile} cannot be read: ${(err as Error).message}`);
  }
})();
// Checked now so a typo fails at start; the token may be the push token, read later from its Secret.
try {
  parseChainSpecs('--gateway-admin', gatewayAdmins, '');
} catch (err) {
  fail((err as Error).message);
}
const sidecarImage = values['sidecar-image'] ?? env.GPUGATE_SIDECAR_IMAGE;
const watchNamespace = values.namespace ?? env.GPUGATE_WATCH_NAMESPACE;
const trustedProxiesRaw = values['trusted-proxies'] ?? env.GPUGATE_TRUSTED_PROXIES ?? '';
const trustedProxies = trustedProxiesRaw
  .split(',')
  .map((c) => c.trim())
  .filter((c) => c !== '');
{
  const parsed = compileCidrs(trustedProxies);
  if (!parsed.ok) fail(`--trusted-proxies: ${parsed.message} (allowed: comma-separated CIDRs or addresses)`);
}

const operator = await startOperator({
  kubeConfig: kc,
  logger,
  registry,
  ...(watchNamespace ? { namespace: watchNamespace } : {}),
  ...((values.identity ?? env.GPUGATE_IDENTITY) ? { identity: values.identity ?? env.GPUGATE_IDENTITY } : {}),
  lease: {
    namespace: values['lease-namespace'] ?? env.POD_NAMESPACE ?? 'gpugate-system',
    name: values['lease-name'] ?? 'gpugate-operator',
    durationMs: int(
      '--lease-duration-ms',
      values['lease-duration-ms'] ?? env.GPUGATE_LEASE_DURATION_MS,
      15_000,
    ),
  },
  ...(dpService
    ? {
        dataplaneService: {
          namespace: dpService.namespace,
          name: dpService.name,
          adminPort: int(
            '--dataplane-admin-port',
            values['dataplane-admin-port'] ?? env.GPUGATE_DATAPLANE_ADMIN_PORT,
            9090,
          ),
        },
      }
    : {}),
  dataplaneUrls: dpUrls,
  pushTokenSecret: {
    namespace: tokenSecret.namespace,
    name: tokenSecret.name,
    key: tokenSecret.key ?? 'token',
  },
  ...(env.DATABASE_URL ? { databaseUrl: env.DATABASE_URL } : {}),
  usageIntervalMs: int(
    '--usage-interval-ms',
    values['usage-interval-ms'] ?? env.GPUGATE_USAGE_INTERVAL_MS,
    30_000,
  ),
  registrationIntervalMs: int(
    '--registration-interval-ms',
    values['registration-interval-ms'] ?? env.GPUGATE_REGISTRATION_INTERVAL_MS,
    5_000,
  ),
  ...(trustedProxies.length > 0 ? { trustedProxies } : {}),
  ...(sidecarImage
    ? {
        sidecar: {
          image: sidecarImage,
          pushTokenSecret:
            values['sidecar-token-secret'] ?? env.GPUGATE_SIDECAR_TOKEN_SECRET ?? tokenSecret.name,
        },
      }
    : {}),
});

const { server, url } = await startOperatorServer(
  {
    registry,
    snapshot: () => operator.publisher.current(),
    token: () => operator.pushToken(),
    ready: () => operator.ready(),
    isLeader: () => operator.isLeader(),
    fleet: {
      targets: () =>
        operator.targets().map((t) => ({
          url: t.url,
          name: t.variant ? `${new URL(t.url).host} (sidecar of ${t.variant})` : new URL(t.url).host,
          expectedRevision: operator.publisher.revisionFor(t),
        })),
      revision: () => operator.publisher.current()?.revision ?? null,
      token: () => operator.pushToken(),
      chains: (): ChainTargets => {
        const token = gatewayToken ?? operator.pushToken();
        return token === null ? {} : parseChainSpecs('--gateway-admin', gatewayAdmins, token);
      },
    },
  },
  listenHost,
  listenPort,
);
logger.info({ url }, 'operator listening');

let stopping = false;
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping: releasing the lease');
    server.close();
    operator.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  });
}
