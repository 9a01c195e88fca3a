// compileRuntime: a validated snapshot → everything the request path needs, built once: route
// table, model index, key index, balancers, endpoint states (pools), task-path patterns. The server
// swaps the reference to a runtime atomically; requests keep the runtime they started with, and a
// replaced runtime releases its endpoints once its last request has ended.
import type { Logger } from 'pino';
import type { Backend, Route, Settings, Snapshot } from '../config/snapshot.ts';
import type { Admission, CompiledAdmission } from '../admission/admission.ts';
import { modelAllowed, type KeyIndex, type Principal } from '../auth/identify.ts';
import { createBalancer, type Balancer } from '../upstream/balancers.ts';
import type { BackendState, EndpointState, UpstreamRegistry } from '../upstream/endpoint.ts';
import { BackendMonitor } from '../upstream/health.ts';
import type { DataPlaneMetrics, RequestMetricChildren } from '../metrics/metrics.ts';
import { RouteTable } from './routes.ts';

export interface CompiledBackend {
  readonly backend: Backend;
  readonly id: string;
  readonly state: BackendState;
  /** Endpoints the control plane lists (ready or not), in snapshot order. */
  readonly endpoints: readonly EndpointState[];
  readonly byEndpointId: ReadonlyMap<string, EndpointState>;
  readonly balancer: Balancer;
  readonly monitor: BackendMonitor;
  readonly anyModel: boolean;
  readonly models: ReadonlySet<string>;
  readonly metrics: RequestMetricChildren;
  /** Regexes for asyncTasks.taskPaths, capturing the id; empty when the backend has no async tasks. */
  readonly taskPatterns: readonly RegExp[];
  readonly retryOnStatus: ReadonlySet<number>;
}

export interface RuntimeOptions {
  registry: UpstreamRegistry;
  metrics: DataPlaneMetrics;
  logger: Logger;
  scrapeIntervalMs: number;
  /** Identity and admission; compiled per snapshot, its buckets outlive the runtime. */
  admission: Admission;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** `/status/{id}` → /^\/status\/([^/]+)$/ */
export function taskPathPattern(template: string): RegExp {
  const [before, after] = template.split('{id}', 2) as [string, string];
  return new RegExp(`^${escapeRegExp(before)}([^/]+)${escapeRegExp(after)}$`);
}

/** An allow-list that admits only some models (empty or containing '*': every model). */
function restricts(list: readonly string[]): boolean {
  return list.length > 0 && !list.includes('*');
}

/**
 * True when the principal may use every model the backend can serve: it has no model restriction
 * (tenant and key allowedModels empty or '*'), or the backend serves only named models that are all
 * allowed. Only then may a request whose model the gateway did not determine (a body it does not
 * read, no x-gpugate-model header) reach the backend: a '*' backend or one also serving a forbidden
 * model would serve whatever model the unread body names.
 */
export function servesOnlyAllowedModels(cb: CompiledBackend, principal: Principal): boolean {
  if (
    !restricts(principal.tenant.allowedModels) &&
    !(principal.key && restricts(principal.key.allowedModels))
  ) {
    return true;
  }
  if (cb.anyModel) return false;
  for (const m of cb.models) if (!modelAllowed(principal, m)) return false;
  return true;
}

export class Runtime {
  readonly revision: string;
  readonly settings: Settings;
  readonly routes: RouteTable<CompiledBackend>;
  readonly backends: readonly CompiledBackend[];
  readonly keys: KeyIndex;
  readonly admission: CompiledAdmission;
  /** Models served by name (not '*'), for /v1/models and 404 hints, with the backends serving each. */
  readonly namedModels: ReadonlyMap<string, readonly CompiledBackend[]>;
  /** True when some backend has async tasks, so paths are checked for task ids. */
  readonly hasAsyncTasks: boolean;
  #active = 0;
  #retired = false;
  #onDrained: (() => void) | null = null;

  constructor(snapshot: Snapshot, opts: RuntimeOptions) {
    this.revision = snapshot.revision;
    this.settings = snapshot.settings;
    this.admission = opts.admission.compile(snapshot);
    this.keys = this.admission.keys;
    const backends: CompiledBackend[] = [];
    const routeEntries: { backend: CompiledBackend; route: Route }[] = [];
    const namedModels = new Map<string, CompiledBackend[]>();
    for (const b of snapshot.backends) {
      const endpoints = b.endpoints.map((ep) => {
        const state = opts.registry.endpointState(b, ep);
        // Weight and readiness may change without a new pool; the balancer reads them live.
        state.weight = ep.weight;
        state.ready = ep.ready;
        return state;
      });
      const compiled: CompiledBackend = {
        backend: b,
        id: b.id,
        state: opts.registry.backendState(b.id),
        endpoints,
        byEndpointId: new Map(endpoints.map((e) => [e.id, e])),
        balancer: createBalancer(b.balancing.policy, opts.scrapeIntervalMs * 3),
        monitor: new BackendMonitor(b, endpoints, {
          scrapeIntervalMs: opts.scrapeIntervalMs,
          logger: opts.logger,
          metrics: opts.metrics,
        }),
        anyModel: b.models.includes('*'),
        models: new Set(b.models.filter((m) => m !== '*')),
        metrics: opts.metrics.requestChildren(b.id),
        taskPatterns: b.asyncTasks ? b.asyncTasks.taskPaths.map(taskPathPattern) : [],
        retryOnStatus: new Set(b.retries.retryOnStatus),
      };
      backends.push(compiled);
      for (const route of b.routes) routeEntries.push({ backend: compiled, route });
      for (const m of compiled.models) {
        const list = namedModels.get(m) ?? [];
        list.push(compiled);
        namedModels.set(m, list);
      }
    }
    this.backends = backends;
    this.routes = new RouteTable(routeEntries, { named: (b) => b.models, any: (b) => b.anyModel });
    this.namedModels = namedModels;
    this.hasAsyncTasks = backends.some((b) => b.taskPatterns.length > 0);
  }

  /** Every endpoint state this runtime references. */
  *endpointStates(): Iterable<EndpointState> {
    for (const b of this.backends) yield* b.endpoints;
  }

  start(): void {
    for (const b of this.backends) b.monitor.start();
  }

  /** A request starts on this runtime. */
  enter(): void {
    this.#active++;
  }

  /** A request that entered has ended (response finished or the client went away). */
  leave(): void {
    this.#active--;
    if (this.#active === 0 && this.#retired) this.#drained();
  }

  get active(): number {
    return this.#active;
  }

  /** Replaced by a newer runtime: stop timers; call onDrained once no request uses it any more. */
  retire(onDrained: () => void): void {
    this.#retired = true;
    this.#onDrained = onDrained;
    for (const b of this.backends) b.monitor.stop();
    if (this.#active === 0) this.#drained();
  }

  #drained(): void {
    const cb = this.#onDrained;
    this.#onDrained = null;
    cb?.();
  }
}
