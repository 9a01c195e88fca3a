// The cluster target: Tenants, ApiKeys and Secrets through the kubeconfig's API server. Writes are
// server-side apply under the field manager `gpugate-cli`, so the CLI owns exactly the fields it
// sets (a Tenant's spec.quota, a new ApiKey and its Secret) and never clobbers what kubectl or the
// operator own. `force` takes over spec.quota when someone else applied it last, which is what
// `gpugate quota set` means.
import {
  ApiException,
  type KubeConfig,
  KubernetesObjectApi,
  PatchStrategy,
  type KubernetesObject,
} from '@kubernetes/client-node';
import {
  API_VERSION,
  GENERATED_SECRET_KEY,
  generatedSecretName,
  type ApiKey,
  type Tenant,
} from '../api/v1alpha1/index.ts';
import { CliError, conflict } from './command.ts';
import type { KeySecret, Quota, Target } from './target.ts';

export const FIELD_MANAGER = 'gpugate-cli';

function isNotFound(err: unknown): boolean {
  return err instanceof ApiException && err.code === 404;
}

/** A message a person can act on, from a client-node error (status and the server's own reason). */
function explain(err: unknown, doing: string): CliError {
  if (err instanceof CliError) return err;
  if (err instanceof ApiException) {
    const body = err.body as { message?: string } | string | undefined;
    const reason =
      typeof body === 'string' ? (JSON.parse(body || '{}') as { message?: string }).message : body?.message;
    const hint =
      err.code === 401 || err.code === 403
        ? ' (check the kubeconfig user and its RBAC: the CLI needs get/list/patch on tenants, apikeys and secrets)'
        : '';
    return new CliError(`${doing}: the API server answered ${err.code}: ${reason ?? err.message}${hint}`);
  }
  return new CliError(`${doing}: ${(err as Error).message}`);
}

/** How often, and for how long in all, a 429 from the API server is retried (it names when in Retry-After). */
const RETRY_429 = { attempts: 6, maxWaitMs: 15_000 };

/**
 * Runs one API call, retrying while the API server answers 429 (too many requests, or a resource's
 * storage still initializing just after its CRD changed), after the server's Retry-After (1 s when
 * absent, at most 5 s a time), as client-go does. Anything else, and the last 429, goes to the caller.
 */
export async function retryTooManyRequests<T>(
  call: () => Promise<T>,
  sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)),
): Promise<T> {
  let waited = 0;
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (err) {
      if (!(err instanceof ApiException) || err.code !== 429 || attempt >= RETRY_429.attempts) throw err;
      const header = (err.headers as Record<string, string | undefined>)['retry-after'];
      const seconds = Number(header);
      const ms = Math.min(Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 1000, 5000);
      if (waited + ms > RETRY_429.maxWaitMs) throw err;
      waited += ms;
      await sleep(ms);
    }
  }
}

export class KubeTarget implements Target {
  readonly description: string;
  readonly #api: KubernetesObjectApi;

  constructor(kc: KubeConfig) {
    this.#api = KubernetesObjectApi.makeApiClient(kc);
    this.description = `cluster ${kc.getCurrentCluster()?.server ?? '(no server in the kubeconfig)'}`;
  }

  static contextNamespace(kc: KubeConfig): string | undefined {
    return kc.getContextObject(kc.getCurrentContext())?.namespace;
  }

  async #read<T>(apiVersion: string, kind: string, namespace: string, name: string): Promise<T | null> {
    try {
      return (await retryTooManyRequests(() =>
        this.#api.read({ apiVersion, kind, metadata: { namespace, name } }),
      )) as unknown as T;
    } catch (err) {
      if (isNotFound(err)) return null;
      throw explain(err, `reading ${kind} ${namespace}/${name}`);
    }
  }

  async #apply(object: KubernetesObject, doing: string): Promise<void> {
    try {
      await retryTooManyRequests(() =>
        this.#api.patch(object, undefined, undefined, FIELD_MANAGER, true, PatchStrategy.ServerSideApply),
      );
    } catch (err) {
      throw explain(err, doing);
    }
  }

  getTenant(namespace: string, name: string): Promise<Tenant | null> {
    return this.#read<Tenant>(API_VERSION, 'Tenant', namespace, name);
  }

  async createTenant(tenant: Tenant): Promise<void> {
    const { namespace = 'default', name } = tenant.metadata;
    if (await this.getTenant(namespace, name)) throw conflict(`Tenant ${namespace}/${name} already exists`);
    await this.#apply(tenant as unknown as KubernetesObject, `creating Tenant ${namespace}/${name}`);
  }

  async setTenantQuota(namespace: string, name: string, quota: Quota): Promise<void> {
    await this.#apply(
      {
        apiVersion: API_VERSION,
        kind: 'Tenant',
        metadata: { namespace, name },
        spec: { quota },
      } as KubernetesObject,
      `setting the quota of Tenant ${namespace}/${name}`,
    );
  }

  async listApiKeys(namespace: string | null): Promise<ApiKey[]> {
    try {
      const list = await retryTooManyRequests(() =>
        this.#api.list(API_VERSION, 'ApiKey', namespace ?? undefined),
      );
      return list.items as unknown as ApiKey[];
    } catch (err) {
      throw explain(err, `listing ApiKeys${namespace ? ` in ${namespace}` : ''}`);
    }
  }

  async readKey(apiKey: ApiKey): Promise<string | null> {
    const namespace = apiKey.metadata.namespace ?? 'default';
    const ref = apiKey.spec.secretRef;
    const secret = await this.#read<KubernetesObject & { data?: Record<string, string> }>(
      'v1',
      'Secret',
      namespace,
      ref?.name ?? generatedSecretName(apiKey.metadata.name),
    );
    const value = secret?.data?.[ref?.key ?? GENERATED_SECRET_KEY];
    return value === undefined ? null : Buffer.from(value, 'base64').toString('utf8');
  }

  async createApiKey(apiKey: ApiKey, secret: KeySecret): Promise<void> {
    const { namespace = 'default', name } = apiKey.metadata;
    if (await this.#read(API_VERSION, 'ApiKey', namespace, name)) {
      throw conflict(`ApiKey ${namespace}/${name} already exists`);
    }
    if (await this.#read('v1', 'Secret', secret.namespace, secret.name)) {
      throw conflict(`Secret ${secret.namespace}/${secret.name} already exists`);
    }
    // The Secret first, so the operator never sees the ApiKey without its key and generates one.
    await this.#apply(
      {
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: {
          namespace: secret.namespace,
          name: secret.name,
          labels: { 'app.kubernetes.io/managed-by': 'gpugate' },
        },
        type: 'Opaque',
        data: { [secret.key]: Buffer.from(secret.value).toString('base64') },
      } as KubernetesObject,
      `creating Secret ${secret.namespace}/${secret.name}`,
    );
    // The key was made here, not by the operator, so the ApiKey names its Secret: the operator counts a
    // Secret under the generated name only when the ApiKey object owns it (docs/operator.md), and this one
    // exists before the ApiKey has a UID.
    const withRef = {
      ...apiKey,
      spec: { ...apiKey.spec, secretRef: { name: secret.name, key: secret.key } },
    };
    await this.#apply(withRef as unknown as KubernetesObject, `creating ApiKey ${namespace}/${name}`);
  }

  async close(): Promise<void> {}
}
