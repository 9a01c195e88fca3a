// A data plane that starts asks the operator for the current snapshot (GET /snapshot on the operator's
// port, the push token as Bearer) instead of waiting for the next push. It keeps asking with backoff
// until it has a snapshot, from this or from a push, whichever comes first; when the operator is away
// it simply stays unready (no snapshot yet) or keeps serving the snapshot it has. Every attempt's log
// line carries its number (from 1) and, when it failed, the wait before the next one (`retryInMs`).
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { request } from 'undici';
import type { ApplyResult } from './admin.ts';

export interface BootstrapOptions {
  operatorUrl: string;
  token: string;
  logger: Logger;
  applySnapshot(input: unknown): ApplyResult;
  /** The revision in use, or null before the first snapshot. */
  revision(): string | null;
  maxDelayMs?: number;
  signal?: AbortSignal;
}

/** Resolves with the applied revision, or null when aborted or a push came first. */
export async function bootstrapFromOperator(opts: BootstrapOptions): Promise<string | null> {
  const url = new URL('/snapshot', opts.operatorUrl);
  for (let attempt = 1; ; attempt++) {
    if (opts.signal?.aborted || opts.revision() !== null) return null;
    const retryInMs = Math.min(opts.maxDelayMs ?? 5000, 200 * 2 ** Math.min(attempt - 1, 6));
    try {
      const res = await request(url, {
        headers: { authorization: `Bearer ${opts.token}` },
        headersTimeout: 5000,
        bodyTimeout: 10_000,
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      if (res.statusCode === 200) {
        const result = opts.applySnapshot(await res.body.json());
        if (result.accepted) {
          opts.logger.info(
            { revision: result.revision.slice(0, 12), from: url.origin, attempt },
            'snapshot from the operator',
          );
          return result.revision;
        }
        if (result.stale) return null; // a push got here first with a newer one
        opts.logger.warn(
          { problems: result.problems, attempt, retryInMs },
          "the operator's snapshot was refused",
        );
      } else {
        await res.body.dump();
        opts.logger.warn(
          { status: res.statusCode, from: url.origin, attempt, retryInMs },
          'the operator has no snapshot for us yet',
        );
      }
    } catch (err) {
      if (opts.signal?.aborted) return null;
      opts.logger.warn(
        { err: (err as Error).message, from: url.origin, attempt, retryInMs },
        'operator unreachable; retrying',
      );
    }
    await sleep(retryInMs);
  }
}
