// Tenant → status: Ready (from the compiler's problems), key count, and usage of the current quota
// period read from the metering tables on an interval when a usage database is configured; for a Tenant with
// a quota, that read also sets the operator's per-tenant quota gauges (Tenants dashboard "Quota left", alert
// GpugateTenantQuotaNearlyExhausted).
import { isDeepStrictEqual } from 'node:util';
import { Gauge, type Registry } from 'prom-client';
import type { Tenant, TenantStatus } from '../api/v1alpha1/index.ts';
import type { KubeObject } from '../kube/client.ts';
import { problemCondition, setConditions, writeStatus, type ConditionInput } from './status.ts';
import { DONE, type ControllerContext, type Key, type Outcome, type Reconciler } from './types.ts';
import type { UsageReader } from './usage.ts';

/** Per-tenant quota gauges, one series per Tenant with a quota (label tenant = "<namespace>/<name>"). */
export interface TenantQuotaMetrics {
  set(tenant: string, credits: number, remaining: number): void;
  remove(tenant: string): void;
  /** Drops every series (this replica stopped leading: another one reads usage now). */
  clear(): void;
}

export function tenantQuotaMetrics(registry: Registry): TenantQuotaMetrics {
  const quota = new Gauge({
    name: 'gpugate_operator_tenant_quota_credits',
    help: "A Tenant's spec.quota.credits for its period (Tenants with a quota, read with their usage).",
    labelNames: ['tenant'] as const,
    registers: [registry],
  });
  const remaining = new Gauge({
    name: 'gpugate_operator_tenant_quota_remaining_credits',
    help: "Credits left in a Tenant's current quota period (quota minus usage_daily's credits, not below 0).",
    labelNames: ['tenant'] as const,
    registers: [registry],
  });
  return {
    set(tenant, credits, left) {
      quota.set({ tenant }, credits);
      remaining.set({ tenant }, left);
    },
    remove(tenant) {
      quota.remove({ tenant });
      remaining.remove({ tenant });
    },
    clear() {
      quota.reset();
      remaining.reset();
    },
  };
}

/**
 * While a Tenant's figures stay the same, its status.usage.updatedAt is rewritten at most this often. Every
 * usage read produces a new updatedAt; writing each one would be an API write per Tenant per interval
 * (1,000 Tenants at the default 30 s: 33 writes a second, each one a watch event for every client) for
 * nothing a user reads. Five minutes keeps "when was this last confirmed?" answerable at a glance.
 */
export const USAGE_REFRESH_MS = 5 * 60_000;

/**
 * The status to write: `next` when something other than usage.updatedAt differs from `written` (or
 * written's updatedAt is older than `refreshMs`, unreadable or ahead of `now`); otherwise `written`'s
 * updatedAt is kept, so that the status equals the object's and no write happens.
 */
export function withoutUsageChurn(
  written: TenantStatus | undefined,
  next: TenantStatus,
  now: Date,
  refreshMs: number,
): TenantStatus {
  const writtenAt = written?.usage?.updatedAt;
  if (!next.usage || writtenAt === undefined) return next;
  const age = now.getTime() - Date.parse(writtenAt);
  if (!(age >= 0 && age < refreshMs)) return next;
  const kept: TenantStatus = { ...next, usage: { ...next.usage, updatedAt: writtenAt } };
  return isDeepStrictEqual(written, kept) ? kept : next;
}

export function tenantReconciler(
  ctx: ControllerContext,
  usage: UsageReader | null,
  usageIntervalMs: number,
  metrics: TenantQuotaMetrics | null = null,
): Reconciler {
  return {
    kind: 'Tenant',
    async reconcile(key: Key): Promise<Outcome> {
      const obj = ctx.caches.tenants.get(key.name, key.namespace);
      if (!obj || obj.metadata.deletionTimestamp) {
        metrics?.remove(`${key.namespace}/${key.name}`);
        return DONE;
      }
      return sync(ctx, obj as Tenant & KubeObject, usage, usageIntervalMs, metrics);
    },
  };
}

async function sync(
  ctx: ControllerContext,
  obj: Tenant & KubeObject,
  usage: UsageReader | null,
  usageIntervalMs: number,
  metrics: TenantQuotaMetrics | null,
): Promise<Outcome> {
  const { namespace = 'default', name } = obj.metadata;
  const now = ctx.now();
  // Like ApiKey status: conditions from a compile that is about to be replaced wait for the new one.
  if (ctx.deferStatus?.('Tenant', { namespace, name })) return DONE;
  const problems = ctx.problemsOf('Tenant', { namespace, name });
  const excluded = problems.find((p) => p.excluded);
  const partial = problems.find((p) => !p.excluded);
  const conditions: ConditionInput[] = [];
  const first = excluded ?? partial;
  conditions.push(
    first
      ? problemCondition('ResolvedRefs', first)
      : { type: 'ResolvedRefs', status: 'True', reason: 'Resolved', message: 'every reference resolved' },
  );
  if (excluded) {
    conditions.push(problemCondition('Ready', excluded));
  } else if (obj.spec.suspended) {
    conditions.push({
      type: 'Ready',
      status: 'False',
      reason: 'Suspended',
      message: 'spec.suspended is true',
    });
  } else {
    conditions.push({
      type: 'Ready',
      status: 'True',
      reason: 'Ready',
      message: partial ? `in the snapshot, partly: ${partial.message}` : 'in the snapshot',
    });
  }
  const keys = ctx.caches.apiKeys.list(namespace).filter((k) => k.spec?.tenant === name).length;
  const status: TenantStatus = {
    observedGeneration: obj.metadata.generation ?? 0,
    conditions: setConditions(obj.status?.conditions, conditions, obj.metadata.generation, now),
    keys,
    ...(obj.status?.usage ? { usage: obj.status.usage } : {}),
  };
  if (usage) {
    const id = `${namespace}/${name}`;
    try {
      const quota = obj.spec.quota ?? null;
      status.usage = await usage.read(id, quota, now);
      if (quota && status.usage.creditsRemaining !== undefined)
        metrics?.set(id, quota.credits, status.usage.creditsRemaining);
      else metrics?.remove(id);
    } catch (err) {
      // The gauges keep the last read, like status.usage.
      ctx.logger.warn({ tenant: `${namespace}/${name}`, err: (err as Error).message }, 'usage read failed');
    }
  }
  await writeStatus(ctx.client, 'tenants', obj, withoutUsageChurn(obj.status, status, now, USAGE_REFRESH_MS));
  return usage ? { result: 'requeueAfter', ms: usageIntervalMs, lane: 'status' } : DONE;
}
