// What every reconciler shares: the key it is given, the outcomes it may return, and the context it
// reads from (informer caches, the latest compile's problems) and writes through (the API client).
import type { Logger } from 'pino';
import type { ApiKey, GpuBackend, Tenant } from '../api/v1alpha1/index.ts';
import type { KubeClient, KubeObject } from '../kube/client.ts';
import type { Informer } from '../kube/informer.ts';
import type { Lane } from './queue.ts';
import type { DiscoveredEndpoint, ObjectProblem } from '../snapshot/compile.ts';

export type Kind = 'GpuBackend' | 'Tenant' | 'ApiKey';

export interface Key {
  namespace: string;
  name: string;
}

/** done: converged. requeueAfter: look again later (expiry, usage refresh), in the spec lane unless said. */
export type Outcome = { result: 'done' } | { result: 'requeueAfter'; ms: number; lane?: Lane };
export const DONE: Outcome = { result: 'done' };

/** Worth retrying with backoff (API errors, conflicts that survived their retries). Any other Error is too. */
export class RetryableError extends Error {}
/** Retrying cannot help (the object is invalid in a way only a user can fix); logged once, not requeued. */
export class TerminalError extends Error {}

export interface EndpointSlice extends KubeObject {
  addressType?: string;
  endpoints?: {
    addresses: string[];
    conditions?: { ready?: boolean; serving?: boolean; terminating?: boolean };
    targetRef?: { kind?: string; name?: string; namespace?: string };
  }[];
  ports?: { name?: string; port?: number; protocol?: string }[];
}

export interface Pod extends KubeObject {
  spec?: { nodeName?: string };
  status?: {
    phase?: string;
    podIP?: string;
    conditions?: { type: string; status: string; reason?: string; message?: string }[];
  };
}

export interface Secret extends KubeObject {
  type?: string;
  data?: Record<string, string>;
}

export interface Caches {
  gpuBackends: Informer<GpuBackend & KubeObject>;
  tenants: Informer<Tenant & KubeObject>;
  apiKeys: Informer<ApiKey & KubeObject>;
  secrets: Informer<Secret>;
  /** EndpointSlices of the Services the operator manages (label app.kubernetes.io/managed-by). */
  backendSlices: Informer<EndpointSlice>;
  /** Pods of managed Deployments, for scheduling status. */
  backendPods: Informer<Pod>;
  /** The Deployments and Services the operator manages (GpuBackend children), to skip applies of no change. */
  backendDeployments: Informer<KubeObject>;
  backendServices: Informer<KubeObject>;
}

export interface ControllerContext {
  client: KubeClient;
  caches: Caches;
  logger: Logger;
  /** Problems of the latest snapshot compile for one object. */
  problemsOf(kind: Kind, key: Key): ObjectProblem[];
  /**
   * True while a compile is due (the caches changed since the last one, so problemsOf may be stale): the
   * key is queued again (status lane) once that compile has run, and the caller skips its status write.
   */
  deferStatus?(kind: Kind, key: Key): boolean;
  /** Live self-registered endpoints of a backend (empty without a database). */
  registeredEndpoints?(key: Key): DiscoveredEndpoint[];
  now(): Date;
}

export interface Reconciler {
  readonly kind: Kind;
  reconcile(key: Key): Promise<Outcome>;
}

export const MANAGED_BY = { 'app.kubernetes.io/managed-by': 'gpugate' } as const;
export const MANAGED_SELECTOR = 'app.kubernetes.io/managed-by=gpugate';
export const BACKEND_LABEL = 'gpugate.io/backend';
