// The Postgres of the metering benchmarks: DATABASE_URL when set, else an embedded server in a new
// folder with durable settings (fsync and synchronous_commit on, as in production).
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmbeddedPostgres } from '../../operator/standalone/postgres.ts';

export interface BenchPostgres {
  url: string;
  /** The embedded server's data folder; undefined with DATABASE_URL (a server elsewhere). */
  dataDir?: string;
  /** Stops the embedded server and removes its folder; nothing with DATABASE_URL. */
  stop(): Promise<void>;
}

export async function startBenchPostgres(): Promise<BenchPostgres> {
  const url = process.env.DATABASE_URL;
  if (url) return { url, stop: async () => undefined };
  const dir = await mkdtemp(join(tmpdir(), 'gpugate-bench-pg-'));
  await chmod(dir, 0o755);
  const server = await startEmbeddedPostgres({ dataDir: join(dir, 'data') });
  return {
    url: server.url,
    dataDir: server.dataDir,
    async stop() {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
