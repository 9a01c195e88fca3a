// The snapshot publisher: compiles the informer caches into a snapshot (debounced and coalesced: a burst
// of events becomes a few compiles, however long it lasts), keeps the newest as "current" (every replica does, so any can serve it), and on
// the leader pushes it to every data-plane target. Each target remembers the revision it acknowledged;
// a target that failed is retried on its own with backoff, without holding up the others.
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Snapshot } from '../../dataplane/config/snapshot.ts';
import { compileSnapshot, type CompileInput, type ObjectProblem } from '../snapshot/compile.ts';
import { pushSnapshot } from './push.ts';

export interface PushTarget {
  /** Admin base URL of a data plane, e.g. http://10.0.0.7:9090. */
  url: string;
  /** Sidecars get a variant of the snapshot (their backend's endpoint is the model server on localhost). */
  variant?: string;
}

export interface PublisherOptions {
  logger: Logger;
  registry: Registry;
  /** Everything but now and settings.replicas (counted from the targets); called on every compile. */
  input(): Omit<CompileInput, 'settings' | 'now'> & { settings?: Omit<CompileInput['settings'], 'replicas'> };
  /** Data-plane admin URLs to push to (shared data planes and sidecars). */
  targets(): PushTarget[];
  /** Variants for sidecars: the input change to apply (called per variant name). */
  variantInput?(variant: string, input: CompileInput): CompileInput;
  token(): string | null;
  isLeader(): boolean;
  onProblems(problems: ObjectProblem[]): void;
  debounceMs?: number;
  /** Monotonic milliseconds (tests inject one); performance.now by default. */
  now?(): number;
}

interface TargetState {
  acked: string | null;
  failures: number;
  retryTimer: NodeJS.Timeout | null;
  inFlight: boolean;
}

export interface Publisher {
  schedule(): void;
  /** A compile is scheduled: the caches changed since the last one. */
  pending(): boolean;
  /** Compiles now (used at start and by tests). */
  compile(): Snapshot;
  current(): Snapshot | null;
  /** The revision a target should hold (its variant's for a sidecar); null before the first compile. */
  revisionFor(target: PushTarget): string | null;
  /** Push the current snapshot to targets that have not acknowledged it (leader only). */
  pushAll(): void;
  /** Forget what targets acknowledged and push again (a data plane may have restarted behind its URL). */
  resync(): void;
  stop(): void;
}

export function createPublisher(opts: PublisherOptions): Publisher {
  const { logger } = opts;
  const debounceMs = opts.debounceMs ?? 30;
  const clock = opts.now ?? (() => performance.now());
  let current: Snapshot | null = null;
  const variants = new Map<string, Snapshot>();
  const states = new Map<string, TargetState>();
  let timer: NodeJS.Timeout | null = null;
  let stopped = false;
  let lastCompileMs = 0;
  let lastCompileEnd = 0;

  const compileSeconds = new Histogram({
    name: 'gpugate_operator_snapshot_compile_seconds',
    help: 'Time to compile the snapshot from the informer caches.',
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers: [opts.registry],
  });
  const pushes = new Counter({
    name: 'gpugate_operator_pushes_total',
    help: 'Snapshot pushes to data planes by result (ok, refused, failed).',
    labelNames: ['result'],
    registers: [opts.registry],
  });
  const pushSeconds = new Histogram({
    name: 'gpugate_operator_push_duration_seconds',
    help: 'Time of one push of the snapshot to one data plane (PUT /config until its answer).',
    buckets: [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers: [opts.registry],
  });
  new Gauge({
    name: 'gpugate_operator_snapshot_age_seconds',
    help: 'Age of the current snapshot (time since its content last changed).',
    registers: [opts.registry],
    collect() {
      this.set(current ? (Date.now() - Date.parse(current.generatedAt)) / 1000 : 0);
    },
  });
  new Gauge({
    name: 'gpugate_operator_push_targets',
    help: 'Data-plane targets by state (acked: have the current revision; pending: not yet).',
    labelNames: ['state'],
    registers: [opts.registry],
    collect() {
      let acked = 0;
      for (const t of opts.targets()) if (states.get(t.url)?.acked === revisionFor(t)) acked++;
      this.set({ state: 'acked' }, acked);
      this.set({ state: 'pending' }, opts.targets().length - acked);
    },
  });

  const revisionFor = (t: PushTarget): string | undefined =>
    (t.variant ? variants.get(t.variant) : current)?.revision;

  function compile(): Snapshot {
    const end = compileSeconds.startTimer();
    const started = clock();
    const targets = opts.targets();
    const replicas = Math.max(1, targets.filter((t) => !t.variant).length);
    const base = opts.input();
    const input: CompileInput = { ...base, settings: { ...base.settings, replicas }, now: new Date() };
    const { snapshot, problems } = compileSnapshot(input);
    // Same content → keep the old snapshot (and its generatedAt): nothing to push.
    if (!current || current.revision !== snapshot.revision) current = snapshot;
    const changed = current === snapshot;
    lastCompileEnd = clock();
    lastCompileMs = lastCompileEnd - started;
    logger.debug(
      {
        revision: snapshot.revision.slice(0, 12),
        changed,
        keys: snapshot.keys.length,
        ms: Math.round(lastCompileMs),
      },
      'compiled',
    );
    for (const name of new Set(targets.flatMap((t) => (t.variant ? [t.variant] : [])))) {
      const v = compileSnapshot(opts.variantInput!(name, input)).snapshot;
      const old = variants.get(name);
      if (!old || old.revision !== v.revision) variants.set(name, v);
    }
    end();
    opts.onProblems(problems);
    return current;
  }

  function pushTo(target: PushTarget): void {
    const state = states.get(target.url) ?? { acked: null, failures: 0, retryTimer: null, inFlight: false };
    states.set(target.url, state);
    const snapshot = target.variant ? variants.get(target.variant) : current;
    if (!snapshot || state.acked === snapshot.revision || state.inFlight || stopped) return;
    const token = opts.token();
    if (token === null) {
      logger.warn('no push token yet; not pushing');
      return;
    }
    if (state.retryTimer) {
      clearTimeout(state.retryTimer);
      state.retryTimer = null;
    }
    state.inFlight = true;
    const started = Date.now();
    const endPush = pushSeconds.startTimer();
    logger.debug({ target: target.url, revision: snapshot.revision.slice(0, 12) }, 'push started');
    pushSnapshot(target.url, snapshot, { token, attempts: 1, timeoutMs: 5000 })
      .then((result) => {
        state.inFlight = false;
        endPush();
        if (result.ok) {
          pushes.labels('ok').inc();
          state.acked = snapshot.revision;
          state.failures = 0;
          logger.debug(
            { target: target.url, revision: snapshot.revision.slice(0, 12), ms: Date.now() - started },
            'pushed',
          );
        } else {
          // 409: the data plane has a newer snapshot (from another leader); it will get ours on the next change.
          const refused = result.status !== null && result.status < 500;
          pushes.labels(refused ? 'refused' : 'failed').inc();
          state.failures++;
          logger.warn(
            { target: target.url, status: result.status, detail: result.detail.slice(0, 500) },
            'push failed',
          );
          if (result.status === 409) state.acked = snapshot.revision;
        }
        // Retry a failure on its own schedule, and catch up if the snapshot changed meanwhile.
        if (!stopped && opts.isLeader()) {
          const latest = target.variant ? variants.get(target.variant) : current;
          if (latest && latest.revision !== state.acked) {
            const delay =
              state.failures === 0 ? 0 : Math.min(10_000, 100 * 2 ** Math.min(state.failures - 1, 7));
            state.retryTimer = setTimeout(() => {
              state.retryTimer = null;
              if (opts.targets().some((t) => t.url === target.url)) pushTo(target);
            }, delay);
          }
        }
      })
      .catch((err: unknown) => {
        state.inFlight = false;
        logger.error({ err }, 'push crashed');
      });
  }

  function pushAll(): void {
    if (!opts.isLeader() || stopped) return;
    const targets = opts.targets();
    const live = new Set(targets.map((t) => t.url));
    for (const [url, s] of states) {
      if (!live.has(url)) {
        if (s.retryTimer) clearTimeout(s.retryTimer);
        states.delete(url);
      }
    }
    for (const t of targets) pushTo(t);
  }

  return {
    schedule() {
      if (timer || stopped) return;
      // The debounce, and at least the last compile's duration between the end of one compile and the
      // start of the next: in a stream of changes (a preload of 10,000 keys) compiling takes at most
      // about half of the process, and each compile takes in everything that came meanwhile. After a
      // quiet spell the next compile waits only the debounce.
      const delay = Math.max(debounceMs, lastCompileEnd + lastCompileMs - clock());
      timer = setTimeout(() => {
        timer = null;
        try {
          compile();
          pushAll();
        } catch (err) {
          logger.error({ err }, 'snapshot compile failed');
        }
      }, delay);
    },
    pending: () => timer !== null,
    compile,
    current: () => current,
    revisionFor: (t) => revisionFor(t) ?? null,
    pushAll,
    resync() {
      for (const s of states.values()) s.acked = null;
      pushAll();
    },
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      for (const s of states.values()) if (s.retryTimer) clearTimeout(s.retryTimer);
    },
  };
}
