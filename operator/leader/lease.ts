// Leader election through a coordination.k8s.io/v1 Lease (the client-go protocol): the holder renews
// spec.renewTime every retry period; another candidate takes the Lease over once renewTime +
// leaseDurationSeconds has passed, with an update conditioned on the resourceVersion it read, so two
// candidates cannot both win. A leader that cannot renew within the lease duration steps down on its
// own, before anyone else may take over (renewDeadline < leaseDuration).
import type { Logger } from 'pino';
import { KubeError, paths, type KubeClient, type KubeObject } from '../kube/client.ts';

interface Lease extends KubeObject {
  spec?: {
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

export interface LeaderElectionOptions {
  client: KubeClient;
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  logger: Logger;
  onStartedLeading(): void;
  onStoppedLeading(): void;
}

export interface LeaderElector {
  isLeader(): boolean;
  /** Gives the Lease up (sets a zero duration) so another replica takes over at once. */
  release(): Promise<void>;
  stop(): void;
}

const microTime = (d: Date) => d.toISOString().replace('Z', '000Z');

export function startLeaderElection(opts: LeaderElectionOptions): LeaderElector {
  const leaseMs = opts.leaseDurationMs ?? 15_000;
  const renewDeadlineMs = opts.renewDeadlineMs ?? Math.floor(leaseMs * (2 / 3));
  const retryMs = opts.retryPeriodMs ?? Math.max(200, Math.floor(leaseMs / 7.5));
  const path = paths.group('coordination.k8s.io', 'v1', 'leases', opts.namespace, opts.name);
  let leader = false;
  let lastRenew = 0;
  let stopped = false;
  let timer: NodeJS.Timeout | null = null;

  const setLeader = (value: boolean) => {
    if (value === leader) return;
    leader = value;
    opts.logger.info(
      { identity: opts.identity, lease: `${opts.namespace}/${opts.name}` },
      value ? 'became leader' : 'stopped leading',
    );
    if (value) opts.onStartedLeading();
    else opts.onStoppedLeading();
  };

  async function tryAcquireOrRenew(): Promise<boolean> {
    const now = new Date();
    let lease: Lease | null = null;
    try {
      lease = await opts.client.get<Lease>(path);
    } catch (err) {
      if (!(err instanceof KubeError) || err.status !== 404) throw err;
    }
    const spec = {
      holderIdentity: opts.identity,
      leaseDurationSeconds: Math.max(1, Math.round(leaseMs / 1000)),
      renewTime: microTime(now),
    };
    if (!lease) {
      await opts.client.create(paths.group('coordination.k8s.io', 'v1', 'leases', opts.namespace), {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: { name: opts.name, namespace: opts.namespace },
        spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 },
      });
      return true;
    }
    const held = lease.spec ?? {};
    const mine = held.holderIdentity === opts.identity;
    const renewedAt = held.renewTime ? Date.parse(held.renewTime) : 0;
    const expired =
      !held.holderIdentity || renewedAt + (held.leaseDurationSeconds ?? 0) * 1000 < now.getTime();
    if (!mine && !expired) return false;
    await opts.client.replace(path, {
      ...lease,
      spec: {
        ...held,
        ...spec,
        acquireTime: mine ? held.acquireTime : microTime(now),
        leaseTransitions: (held.leaseTransitions ?? 0) + (mine ? 0 : 1),
      },
    });
    return true;
  }

  async function loop(): Promise<void> {
    if (stopped) return;
    try {
      const ok = await tryAcquireOrRenew();
      if (ok) lastRenew = Date.now();
      setLeader(ok);
    } catch (err) {
      // A conflict means someone else updated the Lease first; any other error is a failed renewal.
      if (!(err instanceof KubeError && err.status === 409)) {
        opts.logger.warn({ err: (err as Error).message }, 'lease renewal failed');
      }
      if (leader && Date.now() - lastRenew > renewDeadlineMs) setLeader(false);
      if (err instanceof KubeError && err.status === 409 && !leader) setLeader(false);
    }
    if (!stopped) timer = setTimeout(() => void loop(), retryMs);
  }
  void loop();

  return {
    isLeader: () => leader,
    async release() {
      stopped = true;
      if (timer) clearTimeout(timer);
      if (!leader) return;
      setLeader(false);
      try {
        const lease = await opts.client.get<Lease>(path);
        if (lease.spec?.holderIdentity === opts.identity) {
          await opts.client.replace(path, {
            ...lease,
            spec: {
              ...lease.spec,
              holderIdentity: '',
              leaseDurationSeconds: 1,
              renewTime: microTime(new Date(0)),
            },
          });
        }
      } catch (err) {
        opts.logger.warn({ err: (err as Error).message }, 'could not release the lease');
      }
    },
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
    },
  };
}
