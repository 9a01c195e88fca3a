// Starts gpugate (test/bench/gpugate-runner.ts) as its own process for a benchmark, so its CPU and
// memory are its own.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { DATAPLANE_NODE_FLAGS } from '../../dataplane/node-flags.ts';
import { cpuUsOf, procStat } from './load.ts';

export interface GatewayProcess {
  url: string;
  /** Admin API (token `bench`): /metrics. */
  adminUrl: string;
  key: string;
  pid: number;
  /** Resident set now and its peak so far (VmRSS, VmHWM), in bytes. */
  memory(): { rss: number; peak: number };
  /** User + system CPU time so far, in microseconds (/proc/<pid>/stat, 100 ticks/s). */
  cpuUs(): number;
  stop(): Promise<void>;
}

export async function startGateway(
  upstreamUrls: string | readonly string[],
  opts: {
    policy?: 'RoundRobin' | 'LeastRequest' | 'QueueAware';
    scrapeMs?: number;
    /** GPUGATE_BENCH_METERING for the runner: `none`, or a Postgres URL (default: a counting sink). */
    metering?: string;
    /** GPUGATE_BENCH_TRACING for the runner: `off` (default), `unsampled`, `noop`, or an OTLP URL. */
    tracing?: string;
    /** The source tree whose runner is started (default: this one), to compare two versions of gpugate. */
    root?: string;
    /** Node.js flags of the gateway process (default: the data plane's, dataplane/node-flags.ts). */
    nodeFlags?: readonly string[];
  } = {},
): Promise<GatewayProcess> {
  const root = opts.root ?? resolve(import.meta.dirname, '..', '..');
  const dir = mkdtempSync(join(tmpdir(), 'gpugate-gw-'));
  const keyFile = join(dir, 'key');
  const child = spawn(
    process.execPath,
    [
      ...(opts.nodeFlags ?? DATAPLANE_NODE_FLAGS),
      'test/bench/gpugate-runner.ts',
      '0',
      typeof upstreamUrls === 'string' ? upstreamUrls : upstreamUrls.join(','),
      keyFile,
      opts.policy ?? 'LeastRequest',
      String(opts.scrapeMs ?? 1000),
    ],
    {
      cwd: root,
      stdio: ['ignore', 'pipe', 'inherit'],
      env: {
        ...process.env,
        ...(opts.metering ? { GPUGATE_BENCH_METERING: opts.metering } : {}),
        ...(opts.tracing ? { GPUGATE_BENCH_TRACING: opts.tracing } : {}),
      },
    },
  );
  const [url, adminUrl] = await new Promise<[string, string]>((res, rej) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /ready (\S+) admin (\S+)\n/.exec(out);
      if (m) res([m[1] as string, m[2] as string]);
    });
    child.once('exit', (code) => rej(new Error(`gateway exited with ${code}`)));
  });
  const pid = child.pid as number;
  return {
    url,
    adminUrl,
    key: readFileSync(keyFile, 'utf8'),
    pid,
    memory() {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      const kb = (name: string) =>
        Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) * 1024;
      return { rss: kb('VmRSS'), peak: kb('VmHWM') };
    },
    cpuUs() {
      const fields = procStat(pid);
      if (!fields) throw new Error(`the gateway (pid ${pid}) is gone`);
      return cpuUsOf(fields);
    },
    async stop() {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
