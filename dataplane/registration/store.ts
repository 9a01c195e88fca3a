// Where self-registrations are recorded: the registered_endpoints table (migration 003), so every
// data-plane replica can take a registration and the operator sees them all. A new or removed row is
// announced with NOTIFY on REGISTRATION_CHANNEL (payload: the backend id) so the operator recompiles
// at once instead of at its next poll; renewals only move expires_at and announce nothing.
import type pg from 'pg';

export const REGISTRATION_CHANNEL = 'gpugate_registrations';

/** Live registrations per backend beyond which new ones are refused (renewals still pass). */
const MAX_REGISTERED_PER_BACKEND = 512;

export type RegisterResult =
  { ok: true; created: boolean; expiresAt: Date } | { ok: false; reason: 'too_many_endpoints' };

export interface RegistrationStore {
  register(backend: string, url: string, ttlMs: number): Promise<RegisterResult>;
  /** True when a registration was removed. */
  unregister(backend: string, url: string): Promise<boolean>;
}

export function createPgRegistrationStore(pool: pg.Pool): RegistrationStore {
  return {
    async register(backend, url, ttlMs) {
      // One statement: the cap check, the upsert and the announcement of a new row. A renewal of an
      // existing row passes the cap. A row is new (announced) when it was inserted or had expired: then
      // registered_at and renewed_at are both this transaction's now().
      const { rows } = await pool.query<{ expires_at: Date; created: boolean }>(
        `WITH up AS (
           INSERT INTO registered_endpoints (backend, url, expires_at)
           SELECT $1, $2, now() + $3 * interval '1 millisecond'
            WHERE (SELECT count(*) FROM registered_endpoints
                    WHERE backend = $1 AND expires_at > now()) < $4
               OR EXISTS (SELECT 1 FROM registered_endpoints WHERE backend = $1 AND url = $2)
           ON CONFLICT (backend, url) DO UPDATE
             SET renewed_at = now(),
                 expires_at = excluded.expires_at,
                 -- a row that had expired comes back as a new registration
                 registered_at = CASE WHEN registered_endpoints.expires_at > now()
                                      THEN registered_endpoints.registered_at ELSE now() END
           RETURNING expires_at, (registered_at = renewed_at) AS created
         )
         SELECT expires_at, created,
                CASE WHEN created THEN pg_notify('${REGISTRATION_CHANNEL}', $1) END AS notified
           FROM up`,
        [backend, url, ttlMs, MAX_REGISTERED_PER_BACKEND],
      );
      const row = rows[0];
      if (!row) return { ok: false, reason: 'too_many_endpoints' };
      return { ok: true, created: row.created, expiresAt: row.expires_at };
    },
    async unregister(backend, url) {
      const { rows } = await pool.query(
        `WITH gone AS (DELETE FROM registered_endpoints WHERE backend = $1 AND url = $2 RETURNING backend)
         SELECT pg_notify('${REGISTRATION_CHANNEL}', backend) FROM gone`,
        [backend, url],
      );
      return rows.length > 0;
    },
  };
}
