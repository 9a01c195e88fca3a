// The standalone target: the manifests folder `make run` compiles (examples/ by default) and the
// run folder's secrets.yaml. Existing documents are edited through the yaml Document API, so
// comments and layout survive; new objects are appended as new documents.
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { parseAllDocuments, stringify, type Document } from 'yaml';
import {
  GENERATED_SECRET_KEY,
  generatedSecretName,
  type ApiKey,
  type Tenant,
} from '../api/v1alpha1/index.ts';
import { addManifests, emptyManifestSet, loadManifestDir } from '../snapshot/manifests.ts';
import { CliError, conflict } from './command.ts';
import type { KeySecret, Quota, Target } from './target.ts';

const TO_STRING = { flowCollectionPadding: false } as const;

interface Located {
  file: string;
  docs: Document[];
  doc: Document;
}

function matches(doc: Document, kind: string, namespace: string, name: string): boolean {
  return (
    doc.get('kind') === kind &&
    doc.getIn(['metadata', 'name']) === name &&
    ((doc.getIn(['metadata', 'namespace']) as string | undefined) ?? 'default') === namespace
  );
}

/** Appends a document to a YAML file (created when missing), keeping what is there byte for byte. */
function appendDocument(file: string, object: unknown, mode?: number): void {
  const text = stringify(object);
  if (!existsSync(file)) {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, text, mode === undefined ? {} : { mode });
    return;
  }
  const current = readFileSync(file, 'utf8');
  const separator = current.trim() === '' ? '' : current.endsWith('\n') ? '---\n' : '\n---\n';
  appendFileSync(file, separator + text);
}

export class ManifestsTarget implements Target {
  readonly description: string;
  readonly #dir: string;
  readonly #secretsFile: string;

  constructor(dir: string, secretsFile: string) {
    if (!existsSync(dir) || !statSync(dir).isDirectory()) {
      throw new CliError(`manifests folder ${dir} does not exist (give --manifests <dir> or --kubeconfig)`);
    }
    this.#dir = dir;
    this.#secretsFile = secretsFile;
    this.description = `manifests ${dir}`;
  }

  #files(): string[] {
    return readdirSync(this.#dir)
      .sort()
      .filter((f) => /\.ya?ml$/.test(f))
      .map((f) => join(this.#dir, f))
      .filter((p) => statSync(p).isFile());
  }

  #find(kind: string, namespace: string, name: string): Located | null {
    for (const file of this.#files()) {
      const docs = parseAllDocuments(readFileSync(file, 'utf8'));
      if (!Array.isArray(docs)) continue;
      const doc = docs.find((d) => matches(d, kind, namespace, name));
      if (doc) return { file, docs, doc };
    }
    return null;
  }

  /** The file new objects of a kind go to: the first file already holding that kind, else `fallback`. */
  #fileFor(kind: string, fallback: string): string {
    for (const file of this.#files()) {
      const docs = parseAllDocuments(readFileSync(file, 'utf8'));
      if (Array.isArray(docs) && docs.some((d) => d.get('kind') === kind)) return file;
    }
    return join(this.#dir, fallback);
  }

  async getTenant(namespace: string, name: string): Promise<Tenant | null> {
    return (
      loadManifestDir(this.#dir).tenants.find(
        (t) => t.metadata.name === name && (t.metadata.namespace ?? 'default') === namespace,
      ) ?? null
    );
  }

  async createTenant(tenant: Tenant): Promise<void> {
    const { namespace = 'default', name } = tenant.metadata;
    const found = this.#find('Tenant', namespace, name);
    if (found) throw conflict(`Tenant ${namespace}/${name} already exists in ${found.file}`);
    appendDocument(this.#fileFor('Tenant', 'tenants.yaml'), tenant);
  }

  async setTenantQuota(namespace: string, name: string, quota: Quota): Promise<void> {
    const found = this.#find('Tenant', namespace, name);
    if (!found) throw new CliError(`Tenant ${namespace}/${name} is not in ${this.#dir}`);
    found.doc.setIn(['spec', 'quota', 'credits'], quota.credits);
    found.doc.setIn(['spec', 'quota', 'period'], quota.period);
    writeFileSync(found.file, found.docs.map((d) => d.toString(TO_STRING)).join(''));
  }

  async listApiKeys(namespace: string | null): Promise<ApiKey[]> {
    return loadManifestDir(this.#dir).apiKeys.filter(
      (k) => namespace === null || (k.metadata.namespace ?? 'default') === namespace,
    );
  }

  #secrets() {
    const set = emptyManifestSet();
    if (existsSync(this.#secretsFile))
      addManifests(set, readFileSync(this.#secretsFile, 'utf8'), this.#secretsFile);
    return [...set.secrets, ...loadManifestDir(this.#dir).secrets];
  }

  async readKey(apiKey: ApiKey): Promise<string | null> {
    const namespace = apiKey.metadata.namespace ?? 'default';
    const ref = apiKey.spec.secretRef;
    const name = ref?.name ?? generatedSecretName(apiKey.metadata.name);
    const entry = ref?.key ?? GENERATED_SECRET_KEY;
    const secret = this.#secrets().find((s) => s.namespace === namespace && s.name === name);
    return secret?.data[entry] ?? null;
  }

  async createApiKey(apiKey: ApiKey, secret: KeySecret): Promise<void> {
    const { namespace = 'default', name } = apiKey.metadata;
    const found = this.#find('ApiKey', namespace, name);
    if (found) throw conflict(`ApiKey ${namespace}/${name} already exists in ${found.file}`);
    if (this.#secrets().some((s) => s.namespace === secret.namespace && s.name === secret.name)) {
      throw conflict(`Secret ${secret.namespace}/${secret.name} already exists in ${this.#secretsFile}`);
    }
    // The Secret first: an ApiKey without its Secret would get a generated key from `make run`.
    appendDocument(
      this.#secretsFile,
      {
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: secret.name, namespace: secret.namespace },
        stringData: { [secret.key]: secret.value },
      },
      0o600,
    );
    appendDocument(this.#fileFor('ApiKey', 'apikeys.yaml'), apiKey);
  }

  async close(): Promise<void> {}
}
