// The route table: path prefixes (longest match wins, on segment boundaries) and methods, each
// leading to the backends that declared that route.
import type { Route } from '../config/snapshot.ts';

export interface RouteEntry<B> {
  backend: B;
  route: Route;
  /** Null: every method. */
  methods: ReadonlySet<string> | null;
}

/** True when `prefix` matches `path` at a segment boundary: /v1 matches /v1 and /v1/x, not /v1x. */
export function prefixMatches(prefix: string, path: string): boolean {
  if (!path.startsWith(prefix)) return false;
  return path.length === prefix.length || prefix.endsWith('/') || path.charCodeAt(prefix.length) === 47; // '/'
}

/**
 * What a path and method resolve to, built once per snapshot (on first use) and shared by every
 * request that resolves the same way: no array or filter per request.
 */
export interface RouteMatch<B> {
  /** Every entry whose prefix matches and whose methods take the method, longest prefix first; empty: 405. */
  readonly entries: readonly RouteEntry<B>[];
  /**
   * Every entry with the longest matching prefix is public: the request needs no credentials and may
   * only reach public routes.
   */
  readonly isPublic: boolean;
  /** The entries the request may reach: the public ones for a public request, else every entry. */
  readonly usable: readonly RouteEntry<B>[];
  /**
   * The usable entries that serve `model`: those naming it exactly, else those serving '*' (empty:
   * none), longest prefix first within each.
   */
  serving(model: string): readonly RouteEntry<B>[];
}

/** What the table needs to know of a backend to index its models. */
export interface ModelsOf<B> {
  named(backend: B): Iterable<string>;
  any(backend: B): boolean;
}

function resolveMatch<B>(entries: readonly RouteEntry<B>[], models: ModelsOf<B>): RouteMatch<B> {
  const longest = entries[0]?.route.pathPrefix;
  const isPublic =
    entries.length > 0 && entries.every((e) => e.route.pathPrefix !== longest || e.route.public);
  const usable = isPublic ? entries.filter((e) => e.route.public) : entries;
  // Only models some usable backend names: a client's arbitrary model string never grows the index.
  // One pass in usable's order keeps each list longest prefix first.
  const byModel = new Map<string, RouteEntry<B>[]>();
  for (const e of usable) {
    for (const m of models.named(e.backend)) {
      const list = byModel.get(m);
      if (list === undefined) byModel.set(m, [e]);
      else if (list.at(-1) !== e) list.push(e);
    }
  }
  const anyModel = usable.filter((e) => models.any(e.backend));
  return {
    entries,
    isPublic,
    usable,
    serving: (model) => byModel.get(model) ?? anyModel,
  };
}

interface Group<B> {
  prefix: string;
  entries: readonly RouteEntry<B>[];
  /** This group and every shorter one whose prefix matches this prefix, longest first: every path this group matches longest matches exactly these. */
  within: Group<B>[];
  byMethod: Map<string, RouteMatch<B>>;
}

export class RouteTable<B> {
  /** Longest prefix first, so the first group that matches is the longest match. */
  readonly #groups: Group<B>[];
  readonly #models: ModelsOf<B>;

  constructor(entries: Iterable<{ backend: B; route: Route }>, models: ModelsOf<B>) {
    this.#models = models;
    const byPrefix = new Map<string, RouteEntry<B>[]>();
    for (const { backend, route } of entries) {
      const list = byPrefix.get(route.pathPrefix) ?? [];
      list.push({ backend, route, methods: route.methods.length > 0 ? new Set(route.methods) : null });
      byPrefix.set(route.pathPrefix, list);
    }
    this.#groups = [...byPrefix.entries()]
      .map(([prefix, list]) => ({ prefix, entries: list, within: [], byMethod: new Map() }))
      .sort((a, b) => b.prefix.length - a.prefix.length);
    // A path that group g matches longest also matches a shorter group h exactly when h's prefix
    // matches g's prefix (the path continues g's prefix, so the character after h's is the same).
    for (const g of this.#groups) {
      g.within = this.#groups.filter(
        (h) => h === g || (h.prefix.length < g.prefix.length && prefixMatches(h.prefix, g.prefix)),
      );
    }
  }

  /**
   * How the path and method resolve: every entry whose prefix matches the path and whose methods
   * take the method, longest prefix first. Null when no prefix matches the path at all (404); no
   * entries when prefixes match but none takes the method (405). Model choice then prefers the
   * longest prefix that serves the model, so a backend on /v1 still serves its models under /v1/chat
   * when another backend claims /v1/chat for different models.
   */
  resolve(path: string, method: string): RouteMatch<B> | null {
    for (const group of this.#groups) {
      if (!prefixMatches(group.prefix, path)) continue;
      let match = group.byMethod.get(method);
      if (match === undefined) {
        const hits: RouteEntry<B>[] = [];
        for (const g of group.within) {
          for (const e of g.entries) if (e.methods === null || e.methods.has(method)) hits.push(e);
        }
        match = resolveMatch(hits, this.#models);
        group.byMethod.set(method, match);
      }
      return match;
    }
    return null;
  }
}
