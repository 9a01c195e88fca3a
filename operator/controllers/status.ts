// metav1.Condition bookkeeping and status writes. A condition keeps its lastTransitionTime unless
// its status changes; a status is written only when it differs from what the object already has, to
// the status subresource, with the cached resourceVersion; on a conflict the object is re-read and
// the same status is written onto the fresh copy (a few times, then the error is retryable).
import { isDeepStrictEqual } from 'node:util';
import type { Condition } from '../api/v1alpha1/index.ts';
import type { ObjectProblem, ProblemReason } from '../snapshot/compile.ts';
import { KubeError, paths, type KubeClient, type KubeObject } from '../kube/client.ts';
import { RetryableError } from './types.ts';

export type ConditionType = 'Ready' | 'ResolvedRefs';
export type ConditionReason =
  | ProblemReason
  | 'Ready'
  | 'Resolved'
  | 'EndpointsReady'
  | 'NoReadyEndpoints'
  | 'NoEndpoints'
  | 'Unschedulable'
  | 'SidecarImageNotSet'
  | 'Progressing'
  | 'KeyAccepted'
  | 'SecretPending'
  | 'Expired'
  | 'Disabled'
  | 'Suspended'
  | 'NameTooLong';

export interface ConditionInput {
  type: ConditionType;
  status: 'True' | 'False' | 'Unknown';
  reason: ConditionReason;
  message: string;
}

/** The condition a compiler problem sets: False, with the problem's reason and message. */
export function problemCondition(type: ConditionType, problem: ObjectProblem): ConditionInput {
  return { type, status: 'False', reason: problem.reason, message: problem.message };
}

export function setConditions(
  existing: readonly Condition[] | undefined,
  updates: ConditionInput[],
  generation: number | undefined,
  now: Date,
): Condition[] {
  const out = [...(existing ?? [])];
  for (const u of updates) {
    const i = out.findIndex((c) => c.type === u.type);
    const old = i >= 0 ? out[i] : undefined;
    const next: Condition = {
      type: u.type,
      status: u.status,
      reason: u.reason,
      message: u.message.slice(0, 32_768),
      lastTransitionTime:
        old && old.status === u.status ? old.lastTransitionTime : now.toISOString().replace(/\.\d+Z$/, 'Z'),
      ...(generation === undefined ? {} : { observedGeneration: generation }),
    };
    if (i >= 0) out[i] = next;
    else out.push(next);
  }
  return out;
}

/** Writes `status` to the object's status subresource unless it already has it. */
export async function writeStatus(
  client: KubeClient,
  plural: string,
  obj: KubeObject & { status?: unknown },
  status: unknown,
): Promise<boolean> {
  if (isDeepStrictEqual(obj.status ?? {}, status)) return false;
  const path = `${paths.custom(plural, obj.metadata!.namespace, obj.metadata!.name)}/status`;
  let current: KubeObject = obj;
  for (let attempt = 1; ; attempt++) {
    try {
      await client.replace(path, { ...current, status });
      return true;
    } catch (err) {
      if (err instanceof KubeError && err.status === 404) return false; // deleted meanwhile
      if (!(err instanceof KubeError) || err.status !== 409 || attempt >= 4) {
        throw new RetryableError(`status of ${plural} ${obj.metadata!.name}: ${(err as Error).message}`);
      }
      current = await client.get(paths.custom(plural, obj.metadata!.namespace, obj.metadata!.name));
      if (current.metadata?.uid !== obj.metadata?.uid) return false;
    }
  }
}
