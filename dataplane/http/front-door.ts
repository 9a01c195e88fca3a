// The public port's request listener. Proxied requests (nearly all of them) go straight to the proxy,
// without Fastify's routing, request and reply objects and hook runner, which cost more CPU per
// request than the proxy's own routing did (docs/benchmarks.md, proxy overhead). Everything Fastify
// must still decide is handed to Fastify's own handler, unchanged: its routes on the public port (the
// usage API, the registration webhook), CORS preflights, methods and URLs the proxy does not take,
// and every request once the server is closing (Fastify answers those 503).
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isPreflight, stampCors, type CompiledCors } from './cors.ts';
import { saneRequestId } from '../proxy/headers.ts';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

export interface FrontDoorOptions {
  /** Methods the proxy's catch-all route takes; others go to Fastify. */
  proxyMethods: readonly string[];
  /** The proxy: the same call its Fastify route makes, with the request id Fastify would have given. */
  serve(req: IncomingMessage, res: ServerResponse, requestId: string): void;
  /** A request the proxy threw on synchronously: answer 500 in the gateway's error shape. */
  failed(req: IncomingMessage, res: ServerResponse, requestId: string, err: unknown): void;
  /** The current snapshot's CORS settings (null: none). */
  cors(): CompiledCors | null;
  /** True once the server is closing: Fastify's return503OnClosing answers from then on. */
  closing(): boolean;
}

/** The X-Request-Id a request gets: a sane incoming one, else a new UUID (also Fastify's genReqId). */
export function requestIdOf(req: IncomingMessage): string {
  return saneRequestId(req.headers['x-request-id']) ?? randomUUID();
}

/**
 * Routes of Fastify's own on the public port, method by exact path, collected from its onRoute hook.
 * Only static paths: a parametric route would need Fastify's router to decide, so it is refused.
 */
export class FastifyRoutes {
  readonly #byPath = new Map<string, Set<string>>();

  add(method: string | readonly string[], url: string): void {
    if (/[:*(]/.test(url)) {
      throw new Error(
        `route ${url} on the public port is not a static path; the front door (dataplane/http/front-door.ts) hands only static paths to Fastify`,
      );
    }
    let methods = this.#byPath.get(url);
    if (!methods) this.#byPath.set(url, (methods = new Set()));
    for (const m of typeof method === 'string' ? [method] : method) methods.add(m);
  }

  has(method: string, path: string): boolean {
    const methods = this.#byPath.get(path);
    return methods !== undefined && methods.has(method);
  }
}

/**
 * The request listener: `fastify` is Fastify's handler (what serverFactory receives), `routes` its
 * routes other than the proxy's catch-all.
 */
export function frontDoor(fastify: Handler, routes: FastifyRoutes, opts: FrontDoorOptions): Handler {
  const proxyMethods = new Set(opts.proxyMethods);
  return (req, res) => {
    const url = req.url as string;
    const method = req.method as string;
    // Fastify's router decodes percent-escapes and cuts the path at '?' or '#' before it matches,
    // and refuses URLs that are not origin-form (or that fail to decode): such requests are rare and
    // Fastify decides them itself. The proxy reads req.url as it came either way.
    if (url.charCodeAt(0) !== 47 || !proxyMethods.has(method) || opts.closing()) return fastify(req, res);
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    if (path.includes('%') || path.includes('#') || routes.has(method, path)) return fastify(req, res);
    if (req.headers.origin !== undefined) {
      const cors = opts.cors();
      if (cors !== null) {
        if (isPreflight(req)) return fastify(req, res);
        stampCors(cors, req, res);
      }
    }
    const requestId = requestIdOf(req);
    try {
      opts.serve(req, res, requestId);
    } catch (err) {
      opts.failed(req, res, requestId, err);
    }
  };
}
