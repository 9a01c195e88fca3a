// The operator's own HTTP port: GET /snapshot (the current snapshot, for data planes that start; the
// same push token as Bearer), /healthz, /readyz (informer caches synced), /metrics. Every replica
// serves it, leader or not: followers keep their caches warm and compile too. With a fleet source,
// GET /fleet and /fleet/tenants/<ns>/<name> (same token) merge the data planes' admin views.
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Snapshot } from '../dataplane/config/snapshot.ts';
import { snapshotJson } from './snapshot/compile.ts';
import { fleetRoute, type FleetSource } from './aggregate/routes.ts';

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Constant-time check of an `Authorization: Bearer <token>` header. */
function tokenMatches(header: string | undefined, expected: string): boolean {
  if (!header?.toLowerCase().startsWith('bearer ')) return false;
  return timingSafeEqual(digest(header.slice(7).trim()), digest(expected));
}

export interface OperatorServerDeps {
  registry: Registry;
  snapshot(): Snapshot | null;
  token(): string | null;
  ready(): boolean;
  isLeader(): boolean;
  /** The data planes behind GET /fleet; absent: 404. */
  fleet?: FleetSource;
}

export async function startOperatorServer(
  deps: OperatorServerDeps,
  host: string,
  port: number,
): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const send = (status: number, body: unknown, type = 'application/json') => {
      res.writeHead(status, { 'content-type': type });
      res.end(typeof body === 'string' ? body : JSON.stringify(body));
    };
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET') return send(405, { error: 'method not allowed' });
    if (path === '/healthz') return send(200, { status: 'ok' });
    if (path === '/readyz') {
      return deps.ready()
        ? send(200, { status: 'ready', leader: deps.isLeader() })
        : send(503, { status: 'caches not synced' });
    }
    if (path === '/metrics') {
      deps.registry.metrics().then(
        (text) => send(200, text, deps.registry.contentType),
        () => send(500, { error: 'metrics failed' }),
      );
      return;
    }
    if (path === '/snapshot') {
      const token = deps.token();
      if (token === null || !tokenMatches(req.headers.authorization, token)) {
        res.setHeader('www-authenticate', 'Bearer');
        return send(401, { error: 'GET /snapshot needs the push token as a Bearer token' });
      }
      const snapshot = deps.snapshot();
      if (!snapshot || !deps.ready()) return send(503, { error: 'no snapshot compiled yet' });
      return send(200, snapshotJson(snapshot)); // canonical order: the data plane verifies it fastest
    }
    if (deps.fleet && path !== undefined && (path === '/fleet' || path.startsWith('/fleet/'))) {
      const token = deps.token();
      if (token === null || !tokenMatches(req.headers.authorization, token)) {
        res.setHeader('www-authenticate', 'Bearer');
        return send(401, { error: 'GET /fleet needs the push token as a Bearer token' });
      }
      fleetRoute(path, deps.fleet).then(
        (answer) => (answer ? send(answer.status, answer.body) : send(404, { error: 'not found' })),
        (err: unknown) => send(500, { error: `fleet view failed: ${(err as Error).message}` }),
      );
      return;
    }
    return send(404, { error: 'not found' });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  return {
    server,
    url: `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`,
  };
}
