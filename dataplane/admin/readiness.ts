// What /readyz answers: each check with its reason, so whoever reads a failing probe (kubectl describe,
// curl) learns why without the logs. A replica is ready when every *required* check holds:
//   snapshot   a snapshot is applied (its revision and age are given)
//   draining   not stopping after SIGTERM
//   metering   the usage buffer can still take events. Required only while some tenant in the snapshot is
//              fail-closed: such a tenant is refused by a replica whose buffer is full, so traffic should
//              go to replicas that can still record; fail-open tenants are served unmetered by policy, and
//              a Postgres outage must not take every replica out of the Service (docs/operability.md).
//   warmup     the request-path warm-up is over (done, out of budget, failed, or off): a new replica
//              takes traffic once its code is optimized, never later than the budget (dataplane/warmup.ts)
import type { Snapshot } from '../config/snapshot.ts';
import type { WarmupOutcome } from '../warmup.ts';

export interface Check {
  ok: boolean;
  /** Whether a failing check makes the replica not ready. */
  required: boolean;
  reason: string;
}

export interface Readiness {
  status: 'ready' | 'not ready' | 'draining';
  ready: boolean;
  revision: string | null;
  checks: { snapshot: Check; draining: Check; metering: Check; warmup: Check };
}

/** The metering side: the writer's buffer and health, or null without a usage sink. */
export interface MeteringProbe {
  depth(): number;
  isHealthy(): boolean;
  /** False when fail-closed tenants are refused: the buffer has no room left. */
  canAdmit(failOpen: boolean): boolean;
}

export interface ReadinessDeps {
  snapshot(): Snapshot | null;
  snapshotAgeMs(): number | null;
  draining(): boolean;
  metering: MeteringProbe | null;
  /** The warm-up's outcome, null while it runs ({ state: 'off' } without one). */
  warmup(): WarmupOutcome | null;
}

function warmupCheck(outcome: WarmupOutcome | null): Check {
  if (outcome === null)
    return { ok: false, required: true, reason: 'warming up the request path (a private plane on loopback)' };
  switch (outcome.state) {
    case 'off':
      return { ok: true, required: true, reason: 'no warm-up configured' };
    case 'done':
      return {
        ok: true,
        required: true,
        reason: `warmed up: ${outcome.requests} requests in ${outcome.durationMs} ms`,
      };
    case 'budget':
      return {
        ok: true,
        required: true,
        reason: `warm-up stopped by its time budget after ${outcome.requests} requests (${outcome.durationMs} ms)`,
      };
    case 'aborted':
      return {
        ok: true,
        required: true,
        reason: `warm-up stopped after ${outcome.requests} requests: closing`,
      };
    case 'failed':
      return { ok: true, required: true, reason: `warm-up failed, serving without it: ${outcome.error}` };
  }
}

const seconds = (ms: number | null) => (ms === null ? '?' : `${Math.round(ms / 1000)} s`);

export function readiness(deps: ReadinessDeps): Readiness {
  const snap = deps.snapshot();
  const snapshot: Check = snap
    ? {
        ok: true,
        required: true,
        reason: `revision ${snap.revision.slice(0, 12)} applied, content ${seconds(deps.snapshotAgeMs())} old`,
      }
    : {
        ok: false,
        required: true,
        reason: 'no snapshot applied yet: waiting for a push (PUT /config) or the operator',
      };
  const draining: Check = deps.draining()
    ? { ok: false, required: true, reason: 'stopping after SIGTERM: draining in-flight requests' }
    : { ok: true, required: true, reason: 'accepting requests' };
  const m = deps.metering;
  const failClosed = snap?.tenants.filter((t) => !t.failOpen).length ?? 0;
  const why = failClosed > 0 ? `${failClosed} fail-closed tenant(s)` : 'every tenant is fail-open';
  let metering: Check;
  if (!m) {
    metering = { ok: true, required: false, reason: 'no usage sink: usage is not recorded' };
  } else {
    const room = m.canAdmit(false);
    const writes = m.isHealthy() ? 'no write has failed' : 'writes are failing (retrying)';
    metering = {
      ok: room,
      required: failClosed > 0,
      reason: room
        ? `buffer can take events (${m.depth()} buffered); ${writes}`
        : `buffer full (${m.depth()} buffered), fail-closed tenants are refused; ${writes}; required: ${why}`,
    };
  }
  const checks = {
    snapshot,
    draining,
    metering,
    warmup: warmupCheck(deps.warmup()),
  };
  const ready = Object.values(checks).every((c) => c.ok || !c.required);
  return {
    status: ready ? 'ready' : !draining.ok ? 'draining' : 'not ready',
    ready,
    revision: snap?.revision ?? null,
    checks,
  };
}
