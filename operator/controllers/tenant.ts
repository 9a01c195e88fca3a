// Tenant → status: Ready (from the compiler's problems), key count, and usage of the current quota
// period read from the metering tables on an interval when a usage database is configured.
import type { Tenant, TenantStatus } from '../api/v1alpha1/index.ts';
import type { KubeObject } from '../kube/client.ts';
import { setConditions, writeStatus, type ConditionInput, type ConditionReason } from './status.ts';
import { DONE, type ControllerContext, type Key, type Outcome, type Reconciler } from './types.ts';
import type { UsageReader } from './usage.ts';

export function tenantReconciler(
  ctx: ControllerContext,
  usage: UsageReader | null,
  usageIntervalMs: number,
): Reconciler {
  return {
    kind: 'Tenant',
    async reconcile(key: Key): Promise<Outcome> {
      const obj = ctx.caches.tenants.get(key.name, key.namespace);
      if (!obj || obj.metadata.deletionTimestamp) return DONE;
      return sync(ctx, obj as Tenant & KubeObject, usage, usageIntervalMs);
    },
  };
}

async function sync(
  ctx: ControllerContext,
  obj: Tenant & KubeObject,
  usage: UsageReader | null,
  usageIntervalMs: number,
): Promise<Outcome> {
  const { namespace = 'default', name } = obj.metadata;
  const now = ctx.now();
  const problems = ctx.problemsOf('Tenant', { namespace, name });
  const excluded = problems.find((p) => p.excluded);
  const partial = problems.find((p) => !p.excluded);
  const conditions: ConditionInput[] = [];
  const first = excluded ?? partial;
  conditions.push(
    first
      ? {
          type: 'ResolvedRefs',
          status: 'False',
          reason: first.reason as ConditionReason,
          message: first.message,
        }
      : { type: 'ResolvedRefs', status: 'True', reason: 'Resolved', message: 'every reference resolved' },
  );
  if (excluded) {
    conditions.push({
      type: 'Ready',
      status: 'False',
      reason: excluded.reason as ConditionReason,
      message: excluded.message,
    });
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
    try {
      status.usage = await usage.read(`${namespace}/${name}`, obj.spec.quota ?? null, now);
    } catch (err) {
      ctx.logger.warn({ tenant: `${namespace}/${name}`, err: (err as Error).message }, 'usage read failed');
    }
  }
  await writeStatus(ctx.client, 'tenants', obj, status);
  return usage ? { result: 'requeueAfter', ms: usageIntervalMs } : DONE;
}
