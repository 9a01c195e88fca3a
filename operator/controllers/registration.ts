// Self-registered endpoints, as the operator sees them: the live rows of registered_endpoints
// (migration 003), which any data-plane replica writes when a GPU server calls POST /webhook/register.
// The watcher keeps a copy per backend id and calls onChange with the backends whose set changed, so the
// manager recompiles the snapshot (source 'registered') and rewrites those GpuBackends' status.
// It re-reads on a NOTIFY from a data plane (a new or removed registration: at once), when the earliest
// live registration expires (so an endpoint that stopped renewing leaves within its ttl plus the read),
// and every intervalMs in any case (a missed notification, a lost LISTEN connection).
// Standalone mode (`make run`) runs the same watcher and registeredEndpointsOf on its embedded Postgres.
import pg from 'pg';
import type { Logger } from 'pino';
import { REGISTRATION_CHANNEL } from '../../dataplane/registration/store.ts';
import type { GpuBackend } from '../api/v1alpha1/index.ts';
import { objectId, type DiscoveredEndpoint } from '../snapshot/compile.ts';

export interface RegisteredEndpoint extends DiscoveredEndpoint {
  source: 'registered';
  expiresAt: string;
}

export interface RegistrationWatcher {
  /** Live registrations of one backend (namespace/name), sorted by URL. */
  endpoints(backendId: string): RegisteredEndpoint[];
  /** Re-reads now; resolves when the read is done (tests, and the first read). */
  refresh(): Promise<void>;
  close(): Promise<void>;
}

export interface RegistrationWatcherOptions {
  databaseUrl: string;
  logger: Logger;
  onChange(backendIds: string[]): void;
  intervalMs?: number;
  /** Rows expired for longer than this are deleted by the read. */
  sweepAfterMs?: number;
}

const UNDEFINED_TABLE = '42P01';

/**
 * The registered endpoints that go into a backend's snapshot entry: its live registrations while its spec
 * accepts registrations, none otherwise (the rows of a backend whose spec.registration was removed stay in
 * the table until the sweep, and are ignored).
 */
export function registeredEndpointsOf(
  backend: GpuBackend,
  registrations: RegistrationWatcher | null,
): RegisteredEndpoint[] {
  if (!backend.spec?.registration || !registrations) return [];
  return registrations.endpoints(objectId(backend.metadata));
}

export function startRegistrationWatcher(opts: RegistrationWatcherOptions): RegistrationWatcher {
  const intervalMs = opts.intervalMs ?? 5_000;
  const sweepAfterMs = opts.sweepAfterMs ?? 10 * 60_000;
  const pool = new pg.Pool({ connectionString: opts.databaseUrl, max: 2, idleTimeoutMillis: 30_000 });
  pool.on('error', () => {}); // an idle connection dropped by the server; the next query reconnects
  let byBackend = new Map<string, RegisteredEndpoint[]>();
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | null = null;
  let again = false;

  const read = async (): Promise<number> => {
    await pool.query(
      `DELETE FROM registered_endpoints WHERE expires_at < now() - $1 * interval '1 millisecond'`,
      [sweepAfterMs],
    );
    const { rows } = await pool.query<{ backend: string; url: string; expires_at: Date; left_ms: number }>(
      `SELECT backend, url, expires_at,
              ceil(extract(epoch FROM expires_at - now()) * 1000)::float8 AS left_ms
         FROM registered_endpoints WHERE expires_at > now() ORDER BY backend, url`,
    );
    const next = new Map<string, RegisteredEndpoint[]>();
    let soonest = Infinity;
    for (const r of rows) {
      const list = next.get(r.backend) ?? [];
      list.push({ url: r.url, ready: true, source: 'registered', expiresAt: r.expires_at.toISOString() });
      next.set(r.backend, list);
      soonest = Math.min(soonest, r.left_ms);
    }
    const key = (l: RegisteredEndpoint[] | undefined) => (l ?? []).map((e) => e.url).join('\n');
    const changed = [...new Set([...byBackend.keys(), ...next.keys()])].filter(
      (id) => key(byBackend.get(id)) !== key(next.get(id)),
    );
    byBackend = next;
    if (changed.length > 0) {
      opts.logger.info({ backends: changed }, 'registered endpoints changed');
      opts.onChange(changed);
    }
    return soonest;
  };

  const refresh = (): Promise<void> => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        let waitMs = intervalMs;
        try {
          // A few milliseconds past the expiry, so the row reads as expired.
          waitMs = Math.min(intervalMs, Math.max(0, (await read()) + 20));
        } catch (err) {
          const e = err as Error & { code?: string };
          if (e.code === UNDEFINED_TABLE) {
            opts.logger.debug('registered_endpoints does not exist yet (no data plane has migrated)');
          } else {
            opts.logger.warn({ err: e.message }, 'cannot read registered endpoints');
          }
        }
        clearTimeout(timer);
        if (!closed) timer = setTimeout(() => void refresh(), waitMs);
      } while (again && !closed);
      running = null;
    })();
    return running;
  };

  // LISTEN on a connection of its own, reconnected with backoff when it drops.
  let listener: pg.Client | null = null;
  let backoffMs = 200;
  const listen = async (): Promise<void> => {
    if (closed) return;
    const client = new pg.Client({ connectionString: opts.databaseUrl });
    const retry = () => {
      if (listener === client) listener = null;
      void client.end().catch(() => {});
      if (closed) return;
      setTimeout(() => void listen(), backoffMs).unref();
      backoffMs = Math.min(backoffMs * 2, 10_000);
    };
    client.on('error', retry);
    client.on('notification', () => void refresh());
    try {
      await client.connect();
      await client.query(`LISTEN ${REGISTRATION_CHANNEL}`);
      if (closed) {
        await client.end();
        return;
      }
      listener = client;
      backoffMs = 200;
      void refresh(); // whatever was announced while not listening
    } catch (err) {
      opts.logger.warn({ err: (err as Error).message }, 'cannot LISTEN for registrations; retrying');
      retry();
    }
  };
  void listen();
  void refresh();

  return {
    endpoints: (id) => byBackend.get(id) ?? [],
    refresh,
    async close() {
      closed = true;
      clearTimeout(timer);
      await running?.catch(() => {});
      await listener?.end().catch(() => {});
      await pool.end();
    },
  };
}
