// Data-plane metrics on an injected prom-client Registry. Names follow
// gpugate_<subsystem>_<name>_<unit>; labels are bounded (backend ids, status class, result),
// never raw paths, keys or user ids. Children are looked up through small caches so the request
// path does not build label strings.
import { Counter, Gauge, type Registry } from 'prom-client';
import type { UsageEvent, UsageSink } from '../metering/usage.ts';
import { TallyHistogram, type HistogramChild } from './histogram.ts';

export type CodeClass = '2xx' | '3xx' | '4xx' | '5xx';

export function codeClass(status: number): CodeClass {
  if (status < 300) return '2xx';
  if (status < 400) return '3xx';
  if (status < 500) return '4xx';
  return '5xx';
}

/** A counter child the request path increments. */
export interface CounterChild {
  inc(value?: number): void;
}

/**
 * Counter children whose increments are plain additions, handed to prom-client in one inc per series
 * when the registry collects (a scrape). prom-client's own children build and hash a label object on
 * every inc, which the request path paid several times per request.
 */
class Tally<L extends string> {
  readonly #children = new Map<string, { labels: Record<L, string>; n: number; inc(value?: number): void }>();

  /** The child for `key` (one string per label set, built by the caller), created with `labels` on first use. */
  child(key: string, labels: Record<L, string>): CounterChild {
    let c = this.#children.get(key);
    if (c === undefined) {
      c = {
        labels,
        n: 0,
        inc(value = 1) {
          this.n += value;
        },
      };
      this.#children.set(key, c);
    }
    return c;
  }

  /** Adds what was counted since the last collect to the prom-client counter (its collect hook). */
  flush(counter: Counter<L>): void {
    for (const c of this.#children.values()) {
      if (c.n === 0) continue;
      counter.inc(c.labels, c.n);
      c.n = 0;
    }
  }
}

export interface RequestMetricChildren {
  byClass: Record<CodeClass, CounterChild>;
  duration: HistogramChild;
}

export interface DataPlaneMetrics {
  /** Children for a backend label ('' for requests that never reached one). */
  requestChildren(backend: string): RequestMetricChildren;
  upstreamErrors(backend: string, kind: string): Counter.Internal;
  retries(backend: string): Counter.Internal;
  ejections(backend: string): Counter.Internal;
  panics(backend: string): Counter.Internal;
  healthCheckFailures(backend: string): Counter.Internal;
  queueRejections(backend: string): Counter.Internal;
  /** A request refused by a rate limit (tenant '' when the refusal is per client address). */
  admissionRejection(tenant: string, reason: AdmissionRejectionReason): void;
  snapshotApplies: Counter<'result'>;
  snapshotInfo: Gauge<'revision'>;
  snapshotAgeSeconds: Gauge;
}

function cached<T>(make: (key: string) => T): (key: string) => T {
  const cache = new Map<string, T>();
  return (key) => {
    let v = cache.get(key);
    if (v === undefined) {
      v = make(key);
      cache.set(key, v);
    }
    return v;
  };
}

export type EndpointHealth = 'healthy' | 'unhealthy' | 'not_ready';

/** Why admission answered 429 rate_limit_exceeded (quota refusals are gpugate_quota_refusals_total). */
export type AdmissionRejectionReason =
  'requests_per_minute' | 'tokens_per_minute' | 'concurrent_requests' | 'auth_failures' | 'public_requests';

export interface MetricSources {
  snapshotAgeMs(): number | null;
  /** Requests waiting for a free endpoint, per backend id. */
  queueDepths(): Iterable<[string, number]>;
  /** Requests in flight to the endpoints of each backend id; absent: gpugate_upstream_inflight_requests is not exported. */
  inflight?(): Iterable<[string, number]>;
  /**
   * Every endpoint of the current snapshot: not_ready (the control plane says so), unhealthy (failing
   * active checks or ejected) or healthy. Absent: gpugate_upstream_endpoints is not exported.
   */
  endpointHealth?(): Iterable<{ backend: string; health: EndpointHealth }>;
}

export function createMetrics(registry: Registry, sources: MetricSources): DataPlaneMetrics {
  const requestTally = new Tally<'backend' | 'code_class'>();
  // Registered for its collect(): the tally holds the counts between scrapes.
  new Counter({
    name: 'gpugate_proxy_requests_total',
    help: 'Requests answered by the proxy, by backend and status class',
    labelNames: ['backend', 'code_class'] as const,
    registers: [registry],
    collect() {
      requestTally.flush(this);
    },
  });
  const duration = new TallyHistogram({
    name: 'gpugate_proxy_request_duration_seconds',
    help: 'Time from request arrival to the end of the response',
    labelNames: ['backend'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    registers: [registry],
  });
  const upstreamErrors = new Counter({
    name: 'gpugate_upstream_errors_total',
    help: 'Failed upstream attempts by kind (connect, timeout, reset, status)',
    labelNames: ['backend', 'kind'] as const,
    registers: [registry],
  });
  const retries = new Counter({
    name: 'gpugate_upstream_retries_total',
    help: 'Attempts retried on another endpoint',
    labelNames: ['backend'] as const,
    registers: [registry],
  });
  const ejections = new Counter({
    name: 'gpugate_upstream_ejections_total',
    help: 'Endpoints ejected by passive outlier detection',
    labelNames: ['backend'] as const,
    registers: [registry],
  });
  const panics = new Counter({
    name: 'gpugate_upstream_panic_routing_total',
    help: 'Requests routed while no endpoint of the backend was healthy (panic mode: health ignored)',
    labelNames: ['backend'] as const,
    registers: [registry],
  });
  const healthCheckFailures = new Counter({
    name: 'gpugate_upstream_health_check_transitions_total',
    help: 'Endpoints that turned unhealthy by active health checks',
    labelNames: ['backend'] as const,
    registers: [registry],
  });
  const queueRejections = new Counter({
    name: 'gpugate_upstream_queue_rejections_total',
    help: 'Requests refused with 503 because every endpoint was at maxInflightPerEndpoint',
    labelNames: ['backend'] as const,
    registers: [registry],
  });
  const inflightSource = sources.inflight;
  if (inflightSource) {
    new Gauge({
      name: 'gpugate_upstream_inflight_requests',
      help: 'Requests in flight to upstream endpoints, by backend',
      labelNames: ['backend'] as const,
      registers: [registry],
      collect() {
        this.reset();
        for (const [backend, n] of inflightSource()) this.labels(backend).set(n);
      },
    });
  }
  const admissionRejections = new Counter({
    name: 'gpugate_admission_rejections_total',
    help: 'Requests refused with 429 rate_limit_exceeded, by tenant (empty: per client address) and limit',
    labelNames: ['tenant', 'reason'] as const,
    registers: [registry],
  });
  const snapshotApplies = new Counter({
    name: 'gpugate_config_snapshot_applies_total',
    help: 'Snapshots offered to this data plane by result (applied, unchanged, refused)',
    labelNames: ['result'] as const,
    registers: [registry],
  });
  const snapshotInfo = new Gauge({
    name: 'gpugate_config_snapshot_info',
    help: 'The revision of the snapshot in use (value 1)',
    labelNames: ['revision'] as const,
    registers: [registry],
  });
  const snapshotAgeSeconds = new Gauge({
    name: 'gpugate_config_snapshot_age_seconds',
    help: 'Seconds since the current snapshot was applied',
    registers: [registry],
    collect() {
      const age = sources.snapshotAgeMs();
      this.set(age === null ? -1 : age / 1000);
    },
  });
  new Gauge({
    name: 'gpugate_upstream_queued_requests',
    help: 'Requests waiting because every endpoint of the backend is at maxInflightPerEndpoint',
    labelNames: ['backend'] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const [backend, depth] of sources.queueDepths()) this.labels(backend).set(depth);
    },
  });
  const endpointHealth = sources.endpointHealth;
  if (endpointHealth) {
    new Gauge({
      name: 'gpugate_upstream_endpoints',
      help: 'Endpoints of each backend by health (healthy, unhealthy: failing checks or ejected, not_ready)',
      labelNames: ['backend', 'state'] as const,
      registers: [registry],
      collect() {
        this.reset();
        const counts = new Map<string, Record<EndpointHealth, number>>();
        for (const { backend, health } of endpointHealth()) {
          let c = counts.get(backend);
          if (!c) counts.set(backend, (c = { healthy: 0, unhealthy: 0, not_ready: 0 }));
          c[health]++;
        }
        // Zeros too, so "no healthy endpoint" is a sample (== 0), not a missing series.
        for (const [backend, c] of counts)
          for (const state of ['healthy', 'unhealthy', 'not_ready'] as const)
            this.labels(backend, state).set(c[state]);
      },
    });
  }
  return {
    requestChildren: cached((backend) => ({
      byClass: {
        '2xx': requestTally.child(`${backend}\n2xx`, { backend, code_class: '2xx' }),
        '3xx': requestTally.child(`${backend}\n3xx`, { backend, code_class: '3xx' }),
        '4xx': requestTally.child(`${backend}\n4xx`, { backend, code_class: '4xx' }),
        '5xx': requestTally.child(`${backend}\n5xx`, { backend, code_class: '5xx' }),
      },
      duration: duration.child(backend, { backend }),
    })),
    upstreamErrors: (backend, kind) => upstreamErrors.labels(backend, kind),
    retries: cached((b) => retries.labels(b)),
    ejections: cached((b) => ejections.labels(b)),
    panics: cached((b) => panics.labels(b)),
    healthCheckFailures: cached((b) => healthCheckFailures.labels(b)),
    queueRejections: cached((b) => queueRejections.labels(b)),
    admissionRejection: (tenant, reason) => admissionRejections.labels(tenant, reason).inc(),
    snapshotApplies,
    snapshotInfo,
    snapshotAgeSeconds,
  };
}

/** Distinct model label values kept per process; later ones are counted as "other" (clients choose models). */
const MAX_MODEL_LABELS = 64;

/**
 * Wraps the usage sink so every usage event (one per identified request) is also counted as metrics by
 * tenant: requests by route and status class, input/output tokens and credits by model, and the time to the
 * first upstream byte by backend. `next` null: count only.
 */
export function countUsage(registry: Registry, next: UsageSink | null): UsageSink {
  const requestTally = new Tally<'tenant' | 'backend' | 'route' | 'code_class'>();
  const tokenTally = new Tally<'tenant' | 'backend' | 'model' | 'kind'>();
  const creditTally = new Tally<'tenant' | 'backend' | 'model'>();
  new Counter({
    name: 'gpugate_usage_requests_total',
    help: 'Identified requests by tenant, backend, route prefix and status class',
    labelNames: ['tenant', 'backend', 'route', 'code_class'] as const,
    registers: [registry],
    collect() {
      requestTally.flush(this);
    },
  });
  new Counter({
    name: 'gpugate_usage_tokens_total',
    help: 'Tokens by tenant, backend, model and kind (input, output); estimated when the backend reports none',
    labelNames: ['tenant', 'backend', 'model', 'kind'] as const,
    registers: [registry],
    collect() {
      tokenTally.flush(this);
    },
  });
  new Counter({
    name: 'gpugate_usage_credits_total',
    help: 'Credits charged by tenant, backend and model',
    labelNames: ['tenant', 'backend', 'model'] as const,
    registers: [registry],
    collect() {
      creditTally.flush(this);
    },
  });
  const ttfb = new TallyHistogram({
    name: 'gpugate_proxy_time_to_first_byte_seconds',
    help: 'Time from request arrival to the first response byte from the upstream (time to first token when streaming)',
    labelNames: ['backend'] as const,
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
    registers: [registry],
  });
  const ttfbChild = cached((backend) => ttfb.child(backend, { backend }));
  const models = new Set<string>();
  const modelLabel = (model: string | null): string => {
    if (model === null) return '';
    if (models.has(model)) return model;
    if (models.size >= MAX_MODEL_LABELS) return 'other';
    models.add(model);
    return model;
  };
  // Keys join label values with '\n'; the only client-chosen value (the model) comes last, so two
  // label sets never share a key. They are built once per label set: an event finds its children
  // through caches keyed by the values themselves, tenant, then backend, then route or model.
  const childrenOf = cached((tenant) =>
    cached((backend) => ({
      requests: cached((route) => {
        const child = (code: CodeClass) =>
          requestTally.child(`${tenant}\n${backend}\n${code}\n${route}`, {
            tenant,
            backend,
            route,
            code_class: code,
          });
        return { '2xx': child('2xx'), '3xx': child('3xx'), '4xx': child('4xx'), '5xx': child('5xx') };
      }),
      models: cached((model) => {
        const key = `${tenant}\n${backend}\n${model}`;
        return {
          input: tokenTally.child(`input\n${key}`, { tenant, backend, model, kind: 'input' }),
          output: tokenTally.child(`output\n${key}`, { tenant, backend, model, kind: 'output' }),
          credits: creditTally.child(key, { tenant, backend, model }),
        };
      }),
    })),
  );
  const count = (e: UsageEvent): void => {
    const { tenant } = e;
    const backend = e.backend ?? '';
    const counters = childrenOf(tenant)(backend);
    counters.requests(e.route ?? '')[codeClass(e.status)].inc();
    if (e.inputTokens > 0 || e.outputTokens > 0 || e.credits > 0) {
      const children = counters.models(modelLabel(e.model));
      if (e.inputTokens > 0) children.input.inc(e.inputTokens);
      if (e.outputTokens > 0) children.output.inc(e.outputTokens);
      if (e.credits > 0) children.credits.inc(e.credits);
    }
    if (e.ttfbMs !== null) ttfbChild(backend).observe(e.ttfbMs / 1000);
  };
  return {
    record(event) {
      count(event);
      next?.record(event);
    },
  };
}
