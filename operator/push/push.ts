// Pushes a snapshot to one data plane's admin port (PUT /config, Bearer push token), retrying with
// backoff on connection errors and 5xx. A 4xx is final: the data plane refused the snapshot and
// says why (schema, revision, older than its current), and retrying the same bytes cannot help.
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import type { Snapshot } from '../../dataplane/config/snapshot.ts';
import { snapshotJson } from '../snapshot/compile.ts';

export interface PushResult {
  target: string;
  ok: boolean;
  status: number | null;
  /** The data plane's answer (accepted revision, or the problems), or the last connection error. */
  detail: string;
  attempts: number;
}

export interface PushOptions {
  token: string;
  attempts?: number;
  timeoutMs?: number;
  backoffMs?: number;
}

export async function pushSnapshot(
  adminUrl: string,
  snapshot: Snapshot,
  options: PushOptions,
): Promise<PushResult> {
  const attempts = options.attempts ?? 5;
  const body = snapshotJson(snapshot);
  let last: PushResult = { target: adminUrl, ok: false, status: null, detail: 'not attempted', attempts: 0 };
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      const res = await request(new URL('/config', adminUrl), {
        method: 'PUT',
        headers: { authorization: `Bearer ${options.token}`, 'content-type': 'application/json' },
        body,
        headersTimeout: options.timeoutMs ?? 5000,
        bodyTimeout: options.timeoutMs ?? 5000,
      });
      const detail = await res.body.text();
      last = {
        target: adminUrl,
        ok: res.statusCode < 300,
        status: res.statusCode,
        detail,
        attempts: attempt,
      };
      if (res.statusCode < 500) return last;
    } catch (err) {
      last = { target: adminUrl, ok: false, status: null, detail: (err as Error).message, attempts: attempt };
    }
    if (attempt < attempts) await sleep((options.backoffMs ?? 200) * 2 ** (attempt - 1));
  }
  return last;
}
