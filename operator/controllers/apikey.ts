// ApiKey → a generated key Secret (when no secretRef) and status {prefix, secretName, conditions}.
// The key itself is only ever in the Secret: never logged, never in status or events.
//
// The Secret is created with POST (create-only), not server-side apply: an apply from a reconcile that
// runs before the informer has seen the Secret would replace the key with a fresh one. A 409 means it
// exists already; the cache will catch up and the next reconcile reads it.
//
// A generated Secret counts only when its ownerReferences name this ApiKey's UID, never by name alone: a
// Secret of the usual name left by a deleted ApiKey of the same name (garbage collection not done yet, or
// the delete orphaned it) holds a revoked key. The compiler refuses it, and the new key is generated into
// `<name>-gpugate-key-<uid[:8]>` instead (generatedSecretFor). The stale Secret is never read, rewritten
// or deleted here (the operator has no delete on Secrets); garbage collection removes it when it still
// names its old owner, and an orphaned one is the user's to delete.
import {
  API_VERSION,
  GENERATED_SECRET_KEY,
  generatedSecretFor,
  type ApiKey,
  type ApiKeyStatus,
} from '../api/v1alpha1/index.ts';
import { checkKeyShape, generateApiKey, keyPrefix } from '../../dataplane/auth/keys.ts';
import { KubeError, paths, type KubeObject } from '../kube/client.ts';
import { problemCondition, setConditions, writeStatus, type ConditionInput } from './status.ts';
import {
  DONE,
  MANAGED_BY,
  RetryableError,
  type ControllerContext,
  type Key,
  type Outcome,
  type Reconciler,
} from './types.ts';

const REF_REASONS = new Set([
  'TenantNotFound',
  'SecretNotFound',
  'SecretKeyNotFound',
  'SecretNotOwned',
  'InvalidKey',
]);
const MAX_TIMER_MS = 24 * 3600_000;

export function apiKeyReconciler(ctx: ControllerContext): Reconciler {
  return {
    kind: 'ApiKey',
    async reconcile(key: Key): Promise<Outcome> {
      const obj = ctx.caches.apiKeys.get(key.name, key.namespace);
      if (!obj || obj.metadata.deletionTimestamp) return DONE; // children go with their owner
      return sync(ctx, obj as ApiKey & KubeObject);
    },
  };
}

async function sync(ctx: ControllerContext, obj: ApiKey & KubeObject): Promise<Outcome> {
  const { namespace = 'default', name } = obj.metadata;
  const generated = obj.spec.secretRef ? null : generatedSecret(ctx, obj);
  const ref = obj.spec.secretRef ?? { name: generated!.name, key: GENERATED_SECRET_KEY };
  const secret = ctx.caches.secrets.get(ref.name, namespace);
  if (!obj.spec.secretRef && !secret && (await createKeySecret(ctx, obj, ref.name))) {
    ctx.logger.info({ apiKey: `${namespace}/${name}`, secret: ref.name }, 'generated key Secret');
    // No status yet: the Secret's watch event queues this key again, and the status written then is
    // the final one (a SecretPending write here would be overwritten within milliseconds). The requeue
    // only covers a lost event.
    return { result: 'requeueAfter', ms: 500 };
  }
  // Conditions come from the latest compile's problems: while a compile is due they may describe an
  // older cache (a Secret just seen still "not found"), so the status waits for that compile.
  if (ctx.deferStatus?.('ApiKey', { namespace, name })) return DONE;
  // A generated name held by a Secret this object does not own (made by hand) shows no prefix either.
  const raw = !generated || generated.owned ? secret?.data?.[ref.key] : undefined;
  const key = raw === undefined ? undefined : Buffer.from(raw, 'base64').toString('utf8').trim();
  const prefix = key !== undefined && checkKeyShape(key) === 'ok' ? keyPrefix(key) : undefined;

  const problems = ctx.problemsOf('ApiKey', { namespace, name });
  const now = ctx.now();
  const expiresAt = obj.spec.expiresAt ? Date.parse(obj.spec.expiresAt) : undefined;
  const conditions: ConditionInput[] = [];
  const refProblem = problems.find((p) => REF_REASONS.has(p.reason));
  const pendingSecret = !obj.spec.secretRef && !secret;
  if (pendingSecret) {
    conditions.push({
      type: 'ResolvedRefs',
      status: 'Unknown',
      reason: 'SecretPending',
      message: `generating Secret ${ref.name}`,
    });
  } else if (refProblem) {
    conditions.push(problemCondition('ResolvedRefs', refProblem));
  } else {
    conditions.push({
      type: 'ResolvedRefs',
      status: 'True',
      reason: 'Resolved',
      message: `Tenant ${obj.spec.tenant} and Secret ${ref.name} found`,
    });
  }
  const problem = problems[0];
  if (pendingSecret) {
    conditions.push({
      type: 'Ready',
      status: 'False',
      reason: 'SecretPending',
      message: 'the key Secret is being created',
    });
  } else if (problem) {
    conditions.push(problemCondition('Ready', problem));
  } else if (obj.spec.disabled) {
    conditions.push({
      type: 'Ready',
      status: 'False',
      reason: 'Disabled',
      message: 'spec.disabled is true; the key is refused',
    });
  } else if (expiresAt !== undefined && expiresAt <= now.getTime()) {
    conditions.push({
      type: 'Ready',
      status: 'False',
      reason: 'Expired',
      message: `expired at ${obj.spec.expiresAt}`,
    });
  } else {
    conditions.push({
      type: 'Ready',
      status: 'True',
      reason: 'KeyAccepted',
      message: 'the key is in the snapshot',
    });
  }

  const status: ApiKeyStatus = {
    observedGeneration: obj.metadata.generation ?? 0,
    conditions: setConditions(obj.status?.conditions, conditions, obj.metadata.generation, now),
    secretName: ref.name,
    ...(prefix ? { prefix } : {}),
  };
  await writeStatus(ctx.client, 'apikeys', obj, status);
  if (pendingSecret) return { result: 'requeueAfter', ms: 500 };
  if (expiresAt !== undefined && expiresAt > now.getTime() && !obj.spec.disabled) {
    return {
      result: 'requeueAfter',
      ms: Math.min(MAX_TIMER_MS, expiresAt - now.getTime() + 100),
      lane: 'status',
    };
  }
  return DONE;
}

/** The generated Secret this ApiKey object uses (generatedSecretFor: the compiler reads the same one). */
function generatedSecret(ctx: ControllerContext, obj: ApiKey & KubeObject): { name: string; owned: boolean } {
  const { namespace = 'default', name, uid = '' } = obj.metadata;
  return generatedSecretFor(name, uid, (n) => {
    const secret = ctx.caches.secrets.get(n, namespace);
    return secret && (secret.metadata?.ownerReferences ?? []).map((o) => o.uid);
  });
}

async function createKeySecret(
  ctx: ControllerContext,
  obj: ApiKey & KubeObject,
  secretName: string,
): Promise<boolean> {
  const namespace = obj.metadata.namespace ?? 'default';
  const secret: KubeObject = {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: secretName,
      namespace,
      labels: { ...MANAGED_BY, 'gpugate.io/apikey': obj.metadata.name },
      ownerReferences: [
        {
          apiVersion: API_VERSION,
          kind: 'ApiKey',
          name: obj.metadata.name,
          uid: obj.metadata.uid!,
          controller: true,
          blockOwnerDeletion: true,
        },
      ],
    },
    type: 'Opaque',
    data: { [GENERATED_SECRET_KEY]: Buffer.from(generateApiKey()).toString('base64') },
  };
  try {
    await ctx.client.create(paths.core('secrets', namespace), secret);
    return true;
  } catch (err) {
    if (err instanceof KubeError && err.status === 409) return false;
    throw new RetryableError(`create Secret ${namespace}/${secretName}: ${(err as Error).message}`);
  }
}
