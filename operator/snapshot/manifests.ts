// Reads Kubernetes manifests (multi-document YAML, as one would `kubectl apply -f`) into the
// compiler's input. Standalone mode and tests use it; in a cluster the informers provide the same.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { API_VERSION, type ApiKey, type GpuBackend, type Tenant } from '../api/v1alpha1/index.ts';
import type { SecretData } from './compile.ts';

export interface ManifestSet {
  gpuBackends: GpuBackend[];
  tenants: Tenant[];
  apiKeys: ApiKey[];
  secrets: SecretData[];
}

export class ManifestError extends Error {}

interface RawObject {
  apiVersion?: unknown;
  kind?: unknown;
  metadata?: { name?: unknown; namespace?: unknown };
  spec?: unknown;
  data?: Record<string, string>;
  stringData?: Record<string, string>;
}

export function emptyManifestSet(): ManifestSet {
  return { gpuBackends: [], tenants: [], apiKeys: [], secrets: [] };
}

/** Adds the objects of one YAML text to `into`. Throws ManifestError naming the source and document. */
export function addManifests(into: ManifestSet, text: string, source: string): void {
  parseAllDocuments(text).forEach((doc, index) => {
    const where = `${source} (document ${index + 1})`;
    if (doc.errors.length > 0) throw new ManifestError(`${where}: ${doc.errors[0]!.message}`);
    const obj = doc.toJS() as RawObject | null;
    if (obj === null || obj === undefined) return;
    const name = obj.metadata?.name;
    if (typeof name !== 'string' || name === '')
      throw new ManifestError(`${where}: metadata.name is required`);
    const namespace = typeof obj.metadata?.namespace === 'string' ? obj.metadata.namespace : 'default';
    const metadata = { ...(obj.metadata as object), name, namespace };
    if (obj.apiVersion === 'v1' && obj.kind === 'Secret') {
      const data: Record<string, string> = {};
      for (const [k, v] of Object.entries(obj.data ?? {}))
        data[k] = Buffer.from(String(v), 'base64').toString('utf8');
      for (const [k, v] of Object.entries(obj.stringData ?? {})) data[k] = String(v);
      into.secrets.push({ namespace, name, data });
      return;
    }
    if (obj.apiVersion !== API_VERSION) {
      throw new ManifestError(
        `${where}: apiVersion ${JSON.stringify(obj.apiVersion)} is not supported; use ${API_VERSION} (GpuBackend, Tenant, ApiKey) or v1 (Secret)`,
      );
    }
    const object = { ...obj, metadata, spec: obj.spec ?? {} };
    switch (obj.kind) {
      case 'GpuBackend':
        into.gpuBackends.push(object as GpuBackend);
        break;
      case 'Tenant':
        into.tenants.push(object as Tenant);
        break;
      case 'ApiKey':
        into.apiKeys.push(object as ApiKey);
        break;
      default:
        throw new ManifestError(
          `${where}: kind ${JSON.stringify(obj.kind)} is not supported; use GpuBackend, Tenant, ApiKey or Secret`,
        );
    }
  });
}

/** Every *.yaml / *.yml file directly in `dir` (not subfolders), in name order. */
export function loadManifestDir(dir: string): ManifestSet {
  const set = emptyManifestSet();
  for (const file of readdirSync(dir).sort()) {
    const path = join(dir, file);
    if (!/\.ya?ml$/.test(file) || !statSync(path).isFile()) continue;
    addManifests(set, readFileSync(path, 'utf8'), path);
  }
  return set;
}
