// The route table: path prefixes (longest match wins, on segment boundaries) and methods, each
// leading to the backends that declared that route.
import type { Route } from '../config/snapshot.ts';

export interface RouteEntry<B> {
  backend: B;
  route: Route;
  /** Null: every method. */
  methods: ReadonlySet<string> | null;
}

export interface RouteGroup<B> {
  prefix: string;
  entries: readonly RouteEntry<B>[];
}

/** True when `prefix` matches `path` at a segment boundary: /v1 matches /v1 and /v1/x, not /v1x. */
export function prefixMatches(prefix: string, path: string): boolean {
  if (!path.startsWith(prefix)) return false;
  return path.length === prefix.length || prefix.endsWith('/') || path.charCodeAt(prefix.length) === 47; // '/'
}

export class RouteTable<B> {
  /** Longest prefix first, so the first group that matches is the longest match. */
  readonly #groups: RouteGroup<B>[];

  constructor(entries: Iterable<{ backend: B; route: Route }>) {
    const byPrefix = new Map<string, RouteEntry<B>[]>();
    for (const { backend, route } of entries) {
      const list = byPrefix.get(route.pathPrefix) ?? [];
      list.push({ backend, route, methods: route.methods.length > 0 ? new Set(route.methods) : null });
      byPrefix.set(route.pathPrefix, list);
    }
    this.#groups = [...byPrefix.entries()]
      .map(([prefix, list]) => ({ prefix, entries: list }))
      .sort((a, b) => b.prefix.length - a.prefix.length);
  }

  /**
   * Every entry whose prefix matches the path and whose methods take the method, longest prefix
   * first. Null when no prefix matches the path at all (404); an empty array when prefixes match
   * but none takes the method (405). Model choice then prefers the longest prefix that serves the
   * model, so a backend on /v1 still serves its models under /v1/chat when another backend claims
   * /v1/chat for different models.
   */
  match(path: string, method: string): RouteEntry<B>[] | null {
    let pathMatched = false;
    let hits: RouteEntry<B>[] | null = null;
    for (const group of this.#groups) {
      if (!prefixMatches(group.prefix, path)) continue;
      pathMatched = true;
      for (const e of group.entries) {
        if (e.methods === null || e.methods.has(method)) (hits ??= []).push(e);
      }
    }
    return hits ?? (pathMatched ? [] : null);
  }
}
