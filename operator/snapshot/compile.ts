// compileSnapshot: a pure function from custom resources (+ Secrets, + discovered endpoints) to the
// data plane's snapshot. Used by the operator and by standalone mode alike. Nothing here throws on
// bad input: every object that cannot be compiled becomes an ObjectProblem (later a status
// condition) and is left out of the snapshot, so no object is ever dropped without saying why.
import type { TSchema } from 'typebox';
import { Value } from 'typebox/value';
import {
  ApiKeySpec,
  GENERATED_SECRET_KEY,
  GpuBackendSpec,
  TenantSpec,
  generatedSecretName,
  generatedSecretFor,
  parseDurationMs,
  type ApiKey,
  type GpuBackend,
  type SecretKeyRef,
  type Tenant,
} from '../api/v1alpha1/index.ts';
import { SNAPSHOT_SCHEMA_VERSION, type Snapshot } from '../../dataplane/config/snapshot.ts';
import type * as S from '../../dataplane/config/snapshot.ts';
import { canonicalJson, sha256Hex } from '../../dataplane/config/revision.ts';
import { checkKeyShape, hashApiKey, keyPrefix } from '../../dataplane/auth/keys.ts';

/** A Secret's data, already decoded from base64. */
export interface SecretData {
  namespace: string;
  name: string;
  data: Record<string, string>;
  /**
   * The UIDs in the Secret's ownerReferences (the operator sets them; standalone mode has none). A
   * generated key Secret counts for an ApiKey only when they name that ApiKey's UID.
   */
  ownerUids?: string[];
}

/** Endpoints the operator found for a backend: pods of its Deployment, registrations, gateways. */
export interface DiscoveredEndpoint {
  url: string;
  ready: boolean;
  source: 'pod' | 'registered' | 'gateway';
  weight?: number;
}

export interface CompileInput {
  gpuBackends: GpuBackend[];
  tenants: Tenant[];
  apiKeys: ApiKey[];
  secrets: SecretData[];
  /** Keyed by backend id (namespace/name). */
  discoveredEndpoints?: Record<string, DiscoveredEndpoint[]>;
  settings: {
    replicas: number;
    exposeBackendHeader?: boolean;
    maxJsonPeekBytes?: number;
    /** Gateway-level settings passed through when set; absent ones stay out of the snapshot. */
    cors?: S.Cors;
    trustedProxies?: string[];
    clientLimits?: S.ClientLimits;
  };
  now: Date;
}

export type ProblemReason =
  | 'InvalidSpec'
  | 'TenantNotFound'
  | 'BackendNotFound'
  | 'SecretNotFound'
  | 'SecretKeyNotFound'
  | 'SecretNotOwned'
  | 'InvalidKey'
  | 'DuplicateKey';

export interface ObjectProblem {
  kind: 'GpuBackend' | 'Tenant' | 'ApiKey';
  namespace: string;
  name: string;
  reason: ProblemReason;
  message: string;
  /** True when the object was left out of the snapshot; false when it is in, without the broken part. */
  excluded: boolean;
}

export interface CompileResult {
  snapshot: Snapshot;
  problems: ObjectProblem[];
}

export const DEFAULT_SETTINGS = { exposeBackendHeader: true, maxJsonPeekBytes: 1024 * 1024 } as const;
const DEFAULT_ROUTES: NonNullable<Spec<GpuBackend>['routes']> = [{ pathPrefix: '/v1/', public: false }];

type Spec<T> = T extends { spec: infer U } ? U : never;

export function objectId(meta: { namespace?: string; name: string }): string {
  return `${meta.namespace ?? 'default'}/${meta.name}`;
}

type Defaulted<T> = { ok: true; value: T } | { ok: false; message: string };

// The operator compiles the informer's objects, which are replaced on every change and never mutated: a
// spec's defaulted, checked copy (and below, an ApiKey's compiled entry) is kept for as long as its
// object lives, so with 10,000 keys a compile re-validates and re-hashes only what changed. Results are
// the same as without the memo; only objects are keys, so nothing outlives the caches that hold them.
const checkedSpecs = new WeakMap<object, Map<TSchema, Defaulted<unknown>>>();

/** Applies the schema's defaults (as the API server would) to a copy, then checks it. */
function defaulted<T>(schema: TSchema, value: unknown): Defaulted<T> {
  if (typeof value !== 'object' || value === null) return check<T>(schema, value);
  let bySchema = checkedSpecs.get(value);
  if (!bySchema) checkedSpecs.set(value, (bySchema = new Map()));
  let result = bySchema.get(schema);
  if (!result) bySchema.set(schema, (result = check<T>(schema, value)));
  return result as Defaulted<T>;
}

function check<T>(schema: TSchema, value: unknown): Defaulted<T> {
  const copy = Value.Default(schema, Value.Clone(value ?? {}));
  if (Value.Check(schema, copy)) return { ok: true, value: copy as T };
  const first = Value.Errors(schema, copy)[0];
  const where = first?.instancePath ? `spec${first.instancePath.replaceAll('/', '.')}` : 'spec';
  return { ok: false, message: `${where}: ${first?.message ?? 'does not match the schema'}` };
}

type BackendSpec = Spec<GpuBackend>;

/**
 * An optional section of a GpuBackend spec with its schema defaults, also when it was left out
 * entirely (the API server only defaults inside objects that are present).
 */
function section<K extends keyof BackendSpec>(spec: BackendSpec, key: K): NonNullable<BackendSpec[K]> {
  const schema = (GpuBackendSpec as unknown as { properties: Record<string, TSchema> }).properties[
    key as string
  ]!;
  return Value.Default(schema, Value.Clone(spec[key] ?? {})) as NonNullable<BackendSpec[K]>;
}

function sortById<T extends { id: string }>(items: T[]): T[] {
  return items.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

export function compileSnapshot(input: CompileInput): CompileResult {
  const problems: ObjectProblem[] = [];
  const secrets = new Map(input.secrets.map((s) => [`${s.namespace}/${s.name}`, s]));
  const readSecret = (
    namespace: string,
    ref: SecretKeyRef,
  ): { ok: true; value: string } | { ok: false; reason: ProblemReason; message: string } => {
    const data = secrets.get(`${namespace}/${ref.name}`)?.data;
    if (!data)
      return { ok: false, reason: 'SecretNotFound', message: `Secret ${namespace}/${ref.name} not found` };
    const value = data[ref.key];
    if (value === undefined || value === '') {
      return {
        ok: false,
        reason: 'SecretKeyNotFound',
        message: `Secret ${namespace}/${ref.name} has no key ${JSON.stringify(ref.key)}`,
      };
    }
    return { ok: true, value };
  };

  const backends = compileBackends(input, readSecret, problems);
  const backendIds = new Set(backends.map((b) => b.id));
  const tenants = compileTenants(input, backendIds, readSecret, problems);
  const tenantIds = new Set(tenants.map((t) => t.id));
  const keys = compileKeys(
    input,
    tenantIds,
    readSecret,
    (namespace, name) => {
      const secret = secrets.get(`${namespace}/${name}`);
      return secret ? (secret.ownerUids ?? []) : undefined;
    },
    problems,
  );

  const body = {
    schemaVersion: SNAPSHOT_SCHEMA_VERSION,
    settings: {
      replicas: Math.max(1, Math.floor(input.settings.replicas)),
      exposeBackendHeader: input.settings.exposeBackendHeader ?? DEFAULT_SETTINGS.exposeBackendHeader,
      maxJsonPeekBytes: input.settings.maxJsonPeekBytes ?? DEFAULT_SETTINGS.maxJsonPeekBytes,
      ...(input.settings.cors ? { cors: input.settings.cors } : {}),
      ...(input.settings.trustedProxies ? { trustedProxies: input.settings.trustedProxies } : {}),
      ...(input.settings.clientLimits ? { clientLimits: input.settings.clientLimits } : {}),
    },
    backends,
    tenants,
    keys,
  };
  // The members' canonical JSON, written once: hashed (without generatedAt and revision) for the revision,
  // and kept as the body every push target and GET /snapshot sends (snapshotJson).
  const members = {
    backends: canonicalJson(backends),
    keys: `[${keys.map(canonicalKeyEntry).join(',')}]`,
    schemaVersion: canonicalJson(body.schemaVersion),
    settings: canonicalJson(body.settings),
    tenants: canonicalJson(tenants),
  };
  const revision = sha256Hex(canonicalObject(members));
  const generatedAt = input.now.toISOString();
  const snapshot: Snapshot = { ...body, revision, generatedAt };
  snapshotTexts.set(
    snapshot,
    canonicalObject({
      ...members,
      generatedAt: canonicalJson(generatedAt),
      revision: canonicalJson(revision),
    }),
  );
  problems.sort((a, b) =>
    `${a.kind}/${a.namespace}/${a.name}`.localeCompare(`${b.kind}/${b.namespace}/${b.name}`),
  );
  return { snapshot, problems };
}

/** An object's canonical JSON from its members' canonical JSON: members sorted as canonicalJson sorts them. */
function canonicalObject(members: Record<string, string>): string {
  const names = Object.keys(members).sort();
  return `{${names.map((name) => `${JSON.stringify(name)}:${members[name]}`).join(',')}}`;
}

/** Each key entry's canonical JSON, kept with the (memoized, unchanged) entry across compiles. */
const canonicalKeyEntries = new WeakMap<S.ApiKey, string>();

function canonicalKeyEntry(k: S.ApiKey): string {
  let text = canonicalKeyEntries.get(k);
  if (text === undefined) canonicalKeyEntries.set(k, (text = canonicalJson(k)));
  return text;
}

/** Canonical bodies of the snapshots compileSnapshot made, written with their revision. */
const snapshotTexts = new WeakMap<Snapshot, string>();

/**
 * The snapshot as its canonical JSON (members sorted, as canonicalJson writes it): the text compileSnapshot
 * wrote with the revision (one serialization for every push target), else canonicalJson. Parsed by the data
 * plane, its objects come in sorted key order, so verifying the revision there is one native
 * JSON.stringify instead of a sort per object.
 */
export function snapshotJson(snapshot: Snapshot): string {
  return snapshotTexts.get(snapshot) ?? canonicalJson(snapshot);
}

type ReadSecret = (
  namespace: string,
  ref: SecretKeyRef,
) => { ok: true; value: string } | { ok: false; reason: ProblemReason; message: string };

function compileBackends(
  input: CompileInput,
  readSecret: ReadSecret,
  problems: ObjectProblem[],
): S.Backend[] {
  const out: S.Backend[] = [];
  for (const obj of input.gpuBackends) {
    const namespace = obj.metadata.namespace ?? 'default';
    const id = objectId(obj.metadata);
    const problem = (reason: ProblemReason, message: string) =>
      problems.push({
        kind: 'GpuBackend',
        namespace,
        name: obj.metadata.name,
        reason,
        message,
        excluded: true,
      });
    const spec = defaulted<Spec<GpuBackend>>(GpuBackendSpec, obj.spec);
    if (!spec.ok) {
      problem('InvalidSpec', spec.message);
      continue;
    }
    const s = spec.value;
    let upstreamAuth: S.Backend['upstreamAuth'] = null;
    if (s.upstreamAuth) {
      const auth = s.upstreamAuth;
      const secret = readSecret(namespace, auth.secretRef);
      if (!secret.ok) {
        problem(secret.reason, `upstreamAuth: ${secret.message}`);
        continue;
      }
      upstreamAuth = {
        header: auth.header,
        value: auth.scheme ? `${auth.scheme} ${secret.value}` : secret.value,
      };
    }
    let registration: S.Backend['registration'] = null;
    if (s.registration) {
      const secret = readSecret(namespace, s.registration.secretRef);
      if (!secret.ok) {
        problem(secret.reason, `registration: ${secret.message}`);
        continue;
      }
      registration = { secretSha256: sha256Hex(secret.value), ttlMs: parseDurationMs(s.registration.ttl) };
    }

    const balancing = section(s, 'balancing');
    const health = section(s, 'healthCheck');
    const retries = section(s, 'retries');
    const timeouts = section(s, 'timeouts');
    const pricing = section(s, 'pricing');

    const endpoints = new Map<string, S.Endpoint>();
    for (const e of s.endpoints ?? []) {
      endpoints.set(e.url, { id: e.url, url: e.url, weight: e.weight, source: 'static', ready: !e.disabled });
    }
    for (const e of input.discoveredEndpoints?.[id] ?? []) {
      if (endpoints.has(e.url)) continue;
      endpoints.set(e.url, {
        id: e.url,
        url: e.url,
        weight: e.weight ?? 1,
        source: e.source,
        ready: e.ready,
      });
    }

    out.push({
      id,
      protocol: s.protocol,
      models: [...(s.models ?? ['*'])].sort(),
      routes: (s.routes ?? DEFAULT_ROUTES)
        .map((r) => ({
          pathPrefix: r.pathPrefix,
          methods: [...(r.methods ?? [])].sort(),
          public: r.public,
          ...(r.cost === undefined ? {} : { cost: r.cost }),
        }))
        .sort((a, b) => a.pathPrefix.localeCompare(b.pathPrefix)),
      endpoints: sortById([...endpoints.values()]),
      balancing: {
        policy: balancing.policy,
        maxInflightPerEndpoint: balancing.maxInflightPerEndpoint,
        maxQueue: balancing.maxQueue,
        queueTimeoutMs: parseDurationMs(balancing.queueTimeout),
        metricsPath: balancing.metricsPath,
      },
      healthCheck: health.disabled
        ? null
        : {
            path: health.path,
            intervalMs: parseDurationMs(health.interval),
            timeoutMs: parseDurationMs(health.timeout),
            healthyThreshold: health.healthyThreshold,
            unhealthyThreshold: health.unhealthyThreshold,
          },
      retries: { attempts: retries.attempts, retryOnStatus: [...retries.retryOnStatus].sort() },
      timeouts: {
        connectMs: parseDurationMs(timeouts.connect),
        firstByteMs: parseDurationMs(timeouts.firstByte),
        totalMs: parseDurationMs(timeouts.total),
      },
      maxRequestBytes: s.maxRequestBytes,
      pricing: {
        perRequest: pricing.perRequest,
        perInputToken: pricing.perInputToken,
        perOutputToken: pricing.perOutputToken,
      },
      asyncTasks: s.asyncTasks
        ? {
            submitPathPrefix: s.asyncTasks.submitPathPrefix,
            taskIdField: s.asyncTasks.taskIdField,
            taskPaths: [...s.asyncTasks.taskPaths],
            ttlMs: parseDurationMs(s.asyncTasks.ttl),
          }
        : null,
      upstreamAuth,
      registration,
    });
  }
  return sortById(out);
}

function compileTenants(
  input: CompileInput,
  backendIds: Set<string>,
  readSecret: ReadSecret,
  problems: ObjectProblem[],
): S.Tenant[] {
  const out: S.Tenant[] = [];
  for (const obj of input.tenants) {
    const namespace = obj.metadata.namespace ?? 'default';
    const problem = (reason: ProblemReason, message: string, excluded: boolean) =>
      problems.push({ kind: 'Tenant', namespace, name: obj.metadata.name, reason, message, excluded });
    const spec = defaulted<Spec<Tenant>>(TenantSpec, obj.spec);
    if (!spec.ok) {
      problem('InvalidSpec', spec.message, true);
      continue;
    }
    const s = spec.value;
    const allowedBackends: string[] = [];
    for (const ref of s.allowedBackends ?? []) {
      const backendId = ref.includes('/') ? ref : `${namespace}/${ref}`;
      if (backendIds.has(backendId)) allowedBackends.push(backendId);
      else
        problem('BackendNotFound', `allowedBackends: GpuBackend ${backendId} not found or not valid`, false);
    }
    // A tenant whose every allowed backend is missing must not fall back to "every backend".
    if ((s.allowedBackends ?? []).length > 0 && allowedBackends.length === 0) {
      problem(
        'BackendNotFound',
        'allowedBackends: none of the listed GpuBackends exists; the tenant is left out',
        true,
      );
      continue;
    }
    let jwt: S.Tenant['jwt'] = null;
    if (s.jwt) {
      let hsSecret: string | undefined;
      if (s.jwt.hsSecretRef) {
        const secret = readSecret(namespace, s.jwt.hsSecretRef);
        if (secret.ok) hsSecret = secret.value;
        else
          problem(
            secret.reason,
            `jwt.hsSecretRef: ${secret.message}; JWTs are refused, API keys still work`,
            false,
          );
      }
      if (s.jwt.jwksUrl || hsSecret) {
        jwt = {
          issuer: s.jwt.issuer,
          audiences: [...(s.jwt.audiences ?? [])],
          ...(s.jwt.jwksUrl ? { jwksUrl: s.jwt.jwksUrl } : {}),
          ...(hsSecret ? { hsSecret } : {}),
          subjectClaim: s.jwt.subjectClaim,
          userNameClaim: s.jwt.userNameClaim,
        };
      }
    }
    out.push({
      id: objectId(obj.metadata),
      suspended: s.suspended,
      allowedModels: [...(s.allowedModels ?? [])].sort(),
      allowedBackends: allowedBackends.sort(),
      limits: { ...(s.limits ?? {}) },
      quota: s.quota ? { credits: s.quota.credits, period: s.quota.period } : null,
      failOpen: s.failOpen,
      jwt,
    });
  }
  return sortById(out);
}

function compileKeys(
  input: CompileInput,
  tenantIds: Set<string>,
  readSecret: ReadSecret,
  /** The owner UIDs of a Secret; undefined when there is no such Secret. */
  secretOwners: (namespace: string, name: string) => string[] | undefined,
  problems: ObjectProblem[],
): S.ApiKey[] {
  const out: S.ApiKey[] = [];
  const byHash = new Map<string, string>();
  const sorted = [...input.apiKeys].sort((a, b) => objectId(a.metadata).localeCompare(objectId(b.metadata)));
  for (const obj of sorted) {
    const namespace = obj.metadata.namespace ?? 'default';
    const id = objectId(obj.metadata);
    const problem = (reason: ProblemReason, message: string) =>
      problems.push({ kind: 'ApiKey', namespace, name: obj.metadata.name, reason, message, excluded: true });
    const spec = defaulted<Spec<ApiKey>>(ApiKeySpec, obj.spec);
    if (!spec.ok) {
      problem('InvalidSpec', spec.message);
      continue;
    }
    const s = spec.value;
    const tenant = `${namespace}/${s.tenant}`;
    if (!tenantIds.has(tenant)) {
      problem('TenantNotFound', `tenant: Tenant ${tenant} not found or not valid`);
      continue;
    }
    let ref = s.secretRef ?? { name: generatedSecretName(obj.metadata.name), key: GENERATED_SECRET_KEY };
    // A generated Secret is matched by owner, not by name: one left behind by a deleted ApiKey of the same
    // name (garbage collection not done yet, or orphaned) holds a revoked key that must not come back.
    // Objects without a UID (standalone mode's manifests) have nothing to match and keep the name.
    const uid = obj.metadata.uid;
    if (!s.secretRef && uid) {
      const generated = generatedSecretFor(obj.metadata.name, uid, (n) => secretOwners(namespace, n));
      if (generated.taken) {
        problem(
          'SecretNotOwned',
          `Secret ${namespace}/${ref.name} is not owned by this ApiKey (uid ${uid}): it belongs to an earlier ` +
            `object of the same name, or was made by hand, and its key is refused; the key is generated into ` +
            `Secret ${namespace}/${generated.name}`,
        );
        continue;
      }
      ref = { name: generated.name, key: GENERATED_SECRET_KEY };
    }
    const secret = readSecret(namespace, ref);
    if (!secret.ok) {
      problem(secret.reason, secret.message);
      continue;
    }
    const memo = compiledKeys.get(obj);
    if (memo && memo.secret === secret.value && memo.tenant === tenant) {
      const holder = byHash.get(memo.entry.sha256);
      if (holder) {
        problem(
          'DuplicateKey',
          `the key in Secret ${namespace}/${ref.name} is already used by ApiKey ${holder}`,
        );
        continue;
      }
      byHash.set(memo.entry.sha256, id);
      out.push(memo.entry);
      continue;
    }
    const key = secret.value.trim();
    const shape = checkKeyShape(key);
    if (shape !== 'ok') {
      problem(
        'InvalidKey',
        `Secret ${namespace}/${ref.name} key ${JSON.stringify(ref.key)} does not hold a gpugate key (${shape}); ` +
          'generate one with `gpugate key create`, or omit secretRef to let the operator generate it',
      );
      continue;
    }
    const sha256 = hashApiKey(key);
    const holder = byHash.get(sha256);
    if (holder) {
      problem(
        'DuplicateKey',
        `the key in Secret ${namespace}/${ref.name} is already used by ApiKey ${holder}`,
      );
      continue;
    }
    byHash.set(sha256, id);
    const entry: S.ApiKey = {
      id,
      tenant,
      sha256,
      prefix: keyPrefix(key),
      disabled: s.disabled,
      expiresAt: s.expiresAt ? new Date(s.expiresAt).toISOString() : null,
      limits: { ...(s.limits ?? {}) },
      quota: s.quota ? { credits: s.quota.credits, period: s.quota.period } : null,
      allowedModels: [...(s.allowedModels ?? [])].sort(),
      allowedCIDRs: [...(s.allowedCIDRs ?? [])].sort(),
    };
    compiledKeys.set(obj, { secret: secret.value, tenant, entry });
    out.push(entry);
  }
  return sortById(out);
}

/** An ApiKey's snapshot entry, valid while its object, its Secret's value and its tenant id are the same. */
const compiledKeys = new WeakMap<object, { secret: string; tenant: string; entry: S.ApiKey }>();
