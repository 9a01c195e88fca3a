// Standalone mode's stand-in for Kubernetes Secrets: a YAML file in the run folder. Like the
// operator, it generates a key for every ApiKey without secretRef (once, kept across restarts).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { stringify } from 'yaml';
import { generateApiKey } from '../../dataplane/auth/keys.ts';
import { GENERATED_SECRET_KEY, generatedSecretName } from '../api/v1alpha1/index.ts';
import type { SecretData } from '../snapshot/compile.ts';
import { addManifests, emptyManifestSet, type ManifestSet } from '../snapshot/manifests.ts';

/** Secrets from `path`, plus newly generated key Secrets (written back to `path`, mode 0600). */
export function ensureKeySecrets(
  path: string,
  manifests: ManifestSet,
): { secrets: SecretData[]; generated: string[] } {
  const stored = emptyManifestSet();
  if (existsSync(path)) addManifests(stored, readFileSync(path, 'utf8'), path);
  const secrets = new Map(stored.secrets.map((s) => [`${s.namespace}/${s.name}`, s]));
  const generated: string[] = [];
  for (const key of manifests.apiKeys) {
    if (key.spec.secretRef) continue;
    const namespace = key.metadata.namespace ?? 'default';
    const name = generatedSecretName(key.metadata.name);
    if (secrets.has(`${namespace}/${name}`)) continue;
    secrets.set(`${namespace}/${name}`, {
      namespace,
      name,
      data: { [GENERATED_SECRET_KEY]: generateApiKey() },
    });
    generated.push(`${namespace}/${name}`);
  }
  if (generated.length > 0) {
    mkdirSync(dirname(path), { recursive: true });
    const docs = [...secrets.values()].map((s) =>
      stringify({
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: s.name, namespace: s.namespace },
        stringData: s.data,
      }),
    );
    writeFileSync(path, docs.join('---\n'), { mode: 0o600 });
  }
  return { secrets: [...secrets.values(), ...manifests.secrets], generated };
}
