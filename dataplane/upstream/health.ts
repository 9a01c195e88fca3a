// Endpoint health: active checks (backend.healthCheck), passive outlier ejection from real traffic,
// and scraping model-server metrics for QueueAware. Timers belong to one runtime and stop when it is
// replaced; the state they write lives on EndpointState and survives the swap.
import type { Logger } from 'pino';
import type { Backend } from '../config/snapshot.ts';
import type { EndpointState } from './endpoint.ts';
import type { DataPlaneMetrics } from '../metrics/metrics.ts';

export interface OutlierOptions {
  /** Consecutive connect errors or 5xx responses that eject an endpoint. */
  consecutiveFailures: number;
  /** First ejection lasts this long; each further ejection doubles it, up to maxEjectionMs. */
  baseEjectionMs: number;
  maxEjectionMs: number;
}

/** A health check needs the status only: at most this much of its body is read, then it is dropped. */
const HEALTH_BODY_BYTES = 64 * 1024;
/** A metrics page larger than this is not scraped (vLLM's is tens of KiB). */
export const MAX_METRICS_BYTES = 4 * 1024 * 1024;

export const DEFAULT_OUTLIER: OutlierOptions = {
  consecutiveFailures: 5,
  baseEjectionMs: 5_000,
  maxEjectionMs: 120_000,
};

/** Records the outcome of one upstream attempt for passive outlier detection. */
export function recordOutcome(
  e: EndpointState,
  failed: boolean,
  now: number,
  opts: OutlierOptions,
  onEject: (e: EndpointState, forMs: number) => void,
): void {
  if (!failed) {
    e.consecutiveFailures = 0;
    // Came back from an ejection and served: forget the history so a later blip starts short.
    if (e.ejections > 0 && e.ejectedUntil <= now) e.ejections = 0;
    return;
  }
  e.consecutiveFailures++;
  // After an ejection expires the endpoint is on probation: one more failure ejects it again.
  const threshold = e.ejections > 0 ? 1 : opts.consecutiveFailures;
  if (e.consecutiveFailures >= threshold && e.ejectedUntil <= now) {
    const forMs = Math.min(opts.maxEjectionMs, opts.baseEjectionMs * 2 ** Math.min(e.ejections, 16));
    e.ejections++;
    e.ejectedUntil = now + forMs;
    e.consecutiveFailures = 0;
    onEject(e, forMs);
  }
}

/** Sums the samples of a metric over its label sets. Null when the metric is absent. */
function sampleSum(text: string, names: readonly string[]): number | null {
  let sum: number | null = null;
  for (const name of names) {
    let from = 0;
    for (;;) {
      const i = text.indexOf(name, from);
      if (i < 0) break;
      from = i + name.length;
      if (i > 0 && text[i - 1] !== '\n') continue; // a comment line or a longer name
      const next = text[from];
      if (next !== ' ' && next !== '{') continue;
      const lineEnd = text.indexOf('\n', from);
      const line = text.slice(from, lineEnd < 0 ? undefined : lineEnd);
      const valueStart = line.lastIndexOf('}') + 1;
      const value = Number.parseFloat(line.slice(valueStart).trim().split(' ')[0] ?? '');
      if (Number.isFinite(value)) sum = (sum ?? 0) + value;
    }
    if (sum !== null) return sum;
  }
  return sum;
}

/** Reads waiting/running/KV-cache from vLLM, TGI or SGLang Prometheus text. Null if none found. */
export function parseServerLoad(
  text: string,
): { waiting: number; running: number; kvCacheUsage: number } | null {
  const waiting = sampleSum(text, ['vllm:num_requests_waiting', 'sglang:num_queue_reqs', 'tgi_queue_size']);
  const running = sampleSum(text, [
    'vllm:num_requests_running',
    'sglang:num_running_reqs',
    'tgi_batch_current_size',
  ]);
  if (waiting === null && running === null) return null;
  const kv = sampleSum(text, ['vllm:kv_cache_usage_perc', 'vllm:gpu_cache_usage_perc', 'sglang:token_usage']);
  return { waiting: waiting ?? 0, running: running ?? 0, kvCacheUsage: Math.min(1, Math.max(0, kv ?? 0)) };
}

export interface MonitorOptions {
  scrapeIntervalMs: number;
  logger: Logger;
  metrics: DataPlaneMetrics;
}

/** Active checks and metric scraping for one backend's endpoints, for the life of one runtime. */
export class BackendMonitor {
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #backend: Backend;
  readonly #endpoints: readonly EndpointState[];
  readonly #opts: MonitorOptions;
  #stopped = false;

  constructor(backend: Backend, endpoints: readonly EndpointState[], opts: MonitorOptions) {
    this.#backend = backend;
    this.#endpoints = endpoints;
    this.#opts = opts;
  }

  start(): void {
    const hc = this.#backend.healthCheck;
    if (hc && hc.intervalMs > 0) {
      this.#every(hc.intervalMs, () => this.#checkAll());
    }
    if (this.#backend.balancing.policy === 'QueueAware') {
      this.#every(this.#opts.scrapeIntervalMs, () => this.#scrapeAll());
    }
  }

  stop(): void {
    this.#stopped = true;
    for (const t of this.#timers) clearInterval(t);
    this.#timers.length = 0;
  }

  #every(ms: number, fn: () => Promise<void>): void {
    let running = false;
    const tick = () => {
      if (running || this.#stopped) return; // never stack checks on a slow endpoint
      running = true;
      void fn().finally(() => {
        running = false;
      });
    };
    const t = setInterval(tick, ms);
    t.unref();
    this.#timers.push(t);
    tick();
  }

  async #checkAll(): Promise<void> {
    const hc = this.#backend.healthCheck;
    if (!hc) return;
    await Promise.all(
      this.#endpoints.map(async (e) => {
        const ok = await this.#get(e, hc.path, hc.timeoutMs, null).then(
          (r) => r.status >= 200 && r.status < 300,
          () => false,
        );
        if (this.#stopped || e.closed) return;
        if (ok) {
          e.consecutiveCheckFail = 0;
          e.consecutiveCheckOk++;
          if (!e.activeHealthy && e.consecutiveCheckOk >= hc.healthyThreshold) {
            e.activeHealthy = true;
            // A passing check also ends an ejection early: the endpoint has been probed back.
            e.ejectedUntil = 0;
            this.#opts.logger.info({ backend: e.backendId, endpoint: e.id }, 'endpoint healthy again');
          }
        } else {
          e.consecutiveCheckOk = 0;
          e.consecutiveCheckFail++;
          if (e.activeHealthy && e.consecutiveCheckFail >= hc.unhealthyThreshold) {
            e.activeHealthy = false;
            this.#opts.metrics.healthCheckFailures(e.backendId).inc();
            this.#opts.logger.warn(
              { backend: e.backendId, endpoint: e.id },
              'endpoint failed its health checks',
            );
          }
        }
      }),
    );
  }

  async #scrapeAll(): Promise<void> {
    const path = this.#backend.balancing.metricsPath;
    const timeout = Math.max(100, this.#opts.scrapeIntervalMs);
    await Promise.all(
      this.#endpoints.map(async (e) => {
        const inflightAtScrape = e.inflight;
        const res = await this.#get(e, path, timeout, MAX_METRICS_BYTES).catch(() => null);
        if (!res || res.status !== 200 || res.text === null || this.#stopped) return;
        const load = parseServerLoad(res.text);
        if (load) e.load = { ...load, at: Date.now(), inflightAtScrape };
      }),
    );
  }

  /**
   * GET path on the endpoint. With maxBytes the body is read as text, or null when it is longer (the
   * rest is not read); without, the body is only drained, up to HEALTH_BODY_BYTES. Either way a
   * backend answering with a huge body costs the data plane a bounded amount of memory.
   */
  async #get(
    e: EndpointState,
    path: string,
    timeoutMs: number,
    maxBytes: number | null,
  ): Promise<{ status: number; text: string | null }> {
    if (e.closed) throw new Error('endpoint closed');
    const signal = AbortSignal.timeout(Math.max(1, timeoutMs));
    const auth = this.#backend.upstreamAuth;
    const res = await e.pool.request({
      method: 'GET',
      headers: auth ? { [auth.header.toLowerCase()]: auth.value } : {},
      path: e.basePath + path,
      signal,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
    if (maxBytes === null) {
      await res.body.dump({ limit: HEALTH_BODY_BYTES });
      return { status: res.statusCode, text: null };
    }
    const chunks: Buffer[] = [];
    let bytes = 0;
    for await (const chunk of res.body) {
      bytes += (chunk as Buffer).length;
      if (bytes > maxBytes) {
        res.body.destroy();
        return { status: res.statusCode, text: null };
      }
      chunks.push(chunk as Buffer);
    }
    return { status: res.statusCode, text: Buffer.concat(chunks, bytes).toString('utf8') };
  }
}
