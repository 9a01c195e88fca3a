// Where the CLI reads and writes Tenants, ApiKeys and key Secrets: a cluster (through a kubeconfig,
// server-side apply under the field manager `gpugate-cli`) or a standalone manifests folder (YAML
// edited in place, comments kept) with its .run/secrets.yaml. Commands only see this interface.
import type { ApiKey, Tenant } from '../api/v1alpha1/index.ts';

export type Quota = NonNullable<Tenant['spec']['quota']>;

export interface KeySecret {
  namespace: string;
  name: string;
  /** Data key inside the Secret. */
  key: string;
  value: string;
}

export interface Target {
  /** "cluster https://..." or "manifests /path", for messages. */
  readonly description: string;
  getTenant(namespace: string, name: string): Promise<Tenant | null>;
  /** Creates the Tenant; a CliError (conflict) when it exists. */
  createTenant(tenant: Tenant): Promise<void>;
  setTenantQuota(namespace: string, name: string, quota: Quota): Promise<void>;
  /** ApiKeys in one namespace, or every namespace the target can see when null. */
  listApiKeys(namespace: string | null): Promise<ApiKey[]>;
  /** The key value an ApiKey's Secret holds, null when the Secret or its entry is missing. */
  readKey(apiKey: ApiKey): Promise<string | null>;
  /** Creates the key's Secret and then the ApiKey; a CliError (conflict) when the ApiKey exists. */
  createApiKey(apiKey: ApiKey, secret: KeySecret): Promise<void>;
  close(): Promise<void>;
}
