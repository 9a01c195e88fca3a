// An informer over one resource: client-node's ListWatch (list, then watch from the list's
// resourceVersion, relist on 410) wrapped so that a watch that stops on any other error is restarted
// with exponential backoff (client-node stops and only reports those), and so that callers can wait for
// the first complete list.
import { makeInformer, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { KubeClient, KubeObject } from './client.ts';

export interface Informer<T extends KubeObject> {
  readonly resource: string;
  list(namespace?: string): readonly T[];
  get(name: string, namespace?: string): T | undefined;
  /** Resolves after the first list has filled the cache. */
  synced(): Promise<void>;
  stop(): Promise<void>;
}

export interface InformerHandlers<T extends KubeObject> {
  add?(obj: T): void;
  update?(obj: T): void;
  delete?(obj: T): void;
}

export function startInformer<T extends KubeObject>(
  kc: KubeConfig,
  client: KubeClient,
  path: string,
  handlers: InformerHandlers<T>,
  logger: Logger,
  labelSelector?: string,
): Informer<T> {
  let listed = false;
  const inner = makeInformer<KubernetesObject>(
    kc,
    path,
    async () => {
      const list = await client.list<KubeObject>(path, labelSelector);
      listed = true;
      return list as unknown as Awaited<ReturnType<Parameters<typeof makeInformer>[2]>>;
    },
    labelSelector,
  );
  let stopped = false;
  let failures = 0;
  let restartTimer: NodeJS.Timeout | null = null;
  let markSynced: () => void = () => {};
  const syncedPromise = new Promise<void>((resolve) => (markSynced = resolve));

  // One debug line per event: with the queue's, the reconcilers' and the publisher's lines it gives a
  // timestamped trace from "watch event seen" to "pushed" (docs/operator.md, "Tracing one change").
  const seen = (event: string, o: KubernetesObject) =>
    logger.debug(
      { resource: path, event, name: o.metadata?.name, resourceVersion: o.metadata?.resourceVersion },
      'watch event',
    );
  inner.on('add', (o) => (seen('add', o), handlers.add?.(o as T)));
  inner.on('update', (o) => (seen('update', o), handlers.update?.(o as T)));
  inner.on('delete', (o) => (seen('delete', o), handlers.delete?.(o as T)));
  inner.on('connect', () => {
    failures = 0;
  });
  const onError = (err: unknown): void => {
    if (stopped) return;
    failures++;
    const delay = Math.min(30_000, 250 * 2 ** Math.min(failures - 1, 7));
    logger.warn(
      { resource: path, err: (err as Error | undefined)?.message ?? String(err), retryInMs: delay },
      'watch stopped; restarting',
    );
    restartTimer = setTimeout(() => {
      restartTimer = null;
      if (!stopped) start();
    }, delay);
  };
  inner.on('error', onError);

  const start = (): void => {
    // A failed list or watch start does not reject: client-node reports it through 'error', whose
    // handler above schedules the restart. The cache counts as synced once a list went through.
    inner.start().then(
      () => {
        if (listed) markSynced();
      },
      (err: unknown) => onError(err),
    );
  };
  start();

  return {
    resource: path,
    list: (namespace) => inner.list(namespace) as readonly T[],
    get: (name, namespace) => inner.get(name, namespace) as T | undefined,
    synced: () => syncedPromise,
    async stop() {
      stopped = true;
      if (restartTimer) clearTimeout(restartTimer);
      await inner.stop();
    },
  };
}
