// A small JSON client for the Kubernetes API over the KubeConfig's credentials. The generated
// client-node APIs cover most calls, but the operator needs a few things they make awkward: server-side
// apply with one field manager on any kind, status subresources of custom resources, and plain lists
// for the informers. Every call is one HTTPS (or HTTP) request with the KubeConfig's CA, client
// certificate or bearer token applied.
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest, type RequestOptions } from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';

export const FIELD_MANAGER = 'gpugate-operator';

export class KubeError extends Error {
  readonly status: number;
  readonly reason: string;
  constructor(status: number, reason: string, message: string) {
    super(message);
    this.status = status;
    this.reason = reason;
  }
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    generation?: number;
    resourceVersion?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: OwnerReference[];
    deletionTimestamp?: string;
    creationTimestamp?: string;
  };
  [field: string]: unknown;
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface KubeList<T> {
  metadata?: { resourceVersion?: string };
  items: T[];
}

export class KubeClient {
  readonly server: string;
  private readonly kc: KubeConfig;

  constructor(kc: KubeConfig) {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error('the kubeconfig has no current cluster');
    this.kc = kc;
    this.server = cluster.server.replace(/\/$/, '');
  }

  async request<T>(
    method: string,
    path: string,
    options: { body?: unknown; contentType?: string; query?: Record<string, string | undefined> } = {},
  ): Promise<T> {
    const url = new URL(this.server + path);
    for (const [k, v] of Object.entries(options.query ?? {})) if (v !== undefined) url.searchParams.set(k, v);
    const opts: RequestOptions = { method, headers: { accept: 'application/json' } };
    await this.kc.applyToHTTPSOptions(opts);
    const body = options.body === undefined ? undefined : JSON.stringify(options.body);
    const headers = opts.headers as Record<string, string>;
    if (body !== undefined) {
      headers['content-type'] = options.contentType ?? 'application/json';
      headers['content-length'] = String(Buffer.byteLength(body));
    }
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const res = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = send(url, { ...opts, timeout: 30_000 }, (response: IncomingMessage) => {
        const chunks: Buffer[] = [];
        response.on('data', (c: Buffer) => chunks.push(c));
        response.on('end', () =>
          resolve({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }),
        );
        response.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timed out`)));
      req.on('error', reject);
      req.end(body);
    });
    const parsed = res.text ? (JSON.parse(res.text) as unknown) : undefined;
    if (res.status >= 300) {
      const status = parsed as { reason?: string; message?: string } | undefined;
      throw new KubeError(
        res.status,
        status?.reason ?? String(res.status),
        `${method} ${path}: ${res.status} ${status?.message ?? res.text.slice(0, 200)}`,
      );
    }
    return parsed as T;
  }

  get<T extends KubeObject>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  list<T extends KubeObject>(path: string, labelSelector?: string): Promise<KubeList<T>> {
    return this.request<KubeList<T>>('GET', path, { query: { labelSelector } });
  }

  /** Server-side apply under the operator's one field manager; force takes over fields others set. */
  apply<T extends KubeObject>(path: string, object: KubeObject): Promise<T> {
    return this.request<T>('PATCH', path, {
      body: object,
      contentType: 'application/apply-patch+yaml',
      query: { fieldManager: FIELD_MANAGER, force: 'true' },
    });
  }

  create<T extends KubeObject>(collectionPath: string, object: KubeObject): Promise<T> {
    return this.request<T>('POST', collectionPath, {
      body: object,
      query: { fieldManager: FIELD_MANAGER },
    });
  }

  replace<T extends KubeObject>(path: string, object: KubeObject): Promise<T> {
    return this.request<T>('PUT', path, { body: object, query: { fieldManager: FIELD_MANAGER } });
  }
}

/** REST paths of the kinds the operator touches. `namespace` undefined: every namespace. */
export const paths = {
  custom(plural: string, namespace?: string, name?: string): string {
    const ns = namespace === undefined ? '' : `/namespaces/${namespace}`;
    return `/apis/gpugate.io/v1alpha1${ns}/${plural}${name === undefined ? '' : `/${name}`}`;
  },
  core(resource: string, namespace?: string, name?: string): string {
    const ns = namespace === undefined ? '' : `/namespaces/${namespace}`;
    return `/api/v1${ns}/${resource}${name === undefined ? '' : `/${name}`}`;
  },
  group(group: string, version: string, resource: string, namespace?: string, name?: string): string {
    const ns = namespace === undefined ? '' : `/namespaces/${namespace}`;
    return `/apis/${group}/${version}${ns}/${resource}${name === undefined ? '' : `/${name}`}`;
  },
};
