// Validation of a snapshot on receipt: schema version first (so an operator from the future gets a
// precise refusal), then the schema, then the revision against the content, then references.
import { Compile } from 'typebox/compile';
import { Snapshot, SUPPORTED_SCHEMA_VERSIONS } from './snapshot.ts';
import { contentRevision } from './revision.ts';

export interface SnapshotProblem {
  /** JSON pointer into the snapshot, '' for the whole document. */
  path: string;
  message: string;
}

export type ParseResult = { ok: true; snapshot: Snapshot } | { ok: false; problems: SnapshotProblem[] };

const checker = Compile(Snapshot);
const MAX_PROBLEMS = 20;

export function parseSnapshot(input: unknown): ParseResult {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    return refuse('', 'a snapshot must be a JSON object');
  }
  const version = (input as { schemaVersion?: unknown }).schemaVersion;
  if (typeof version !== 'number' || !SUPPORTED_SCHEMA_VERSIONS.includes(version)) {
    return refuse(
      '/schemaVersion',
      `unsupported snapshot schemaVersion ${JSON.stringify(version)}; this data plane supports ${SUPPORTED_SCHEMA_VERSIONS.join(', ')}`,
    );
  }
  if (!checker.Check(input)) {
    const problems: SnapshotProblem[] = [];
    for (const e of checker.Errors(input)) {
      problems.push({ path: e.instancePath, message: e.message });
      if (problems.length >= MAX_PROBLEMS) break;
    }
    return { ok: false, problems };
  }
  const snapshot = input as Snapshot;
  const expected = contentRevision(snapshot);
  if (snapshot.revision !== expected) {
    return refuse(
      '/revision',
      `revision ${snapshot.revision} does not match the content (expected ${expected})`,
    );
  }
  const problems = checkReferences(snapshot);
  return problems.length > 0 ? { ok: false, problems } : { ok: true, snapshot };
}

function checkReferences(s: Snapshot): SnapshotProblem[] {
  const problems: SnapshotProblem[] = [];
  const tenants = new Set(s.tenants.map((t) => t.id));
  const backends = new Set<string>();
  s.backends.forEach((b, i) => {
    if (backends.has(b.id))
      problems.push({ path: `/backends/${i}/id`, message: `duplicate backend id ${b.id}` });
    backends.add(b.id);
    const endpointIds = new Set<string>();
    b.endpoints.forEach((e, j) => {
      if (!URL.canParse(e.url)) {
        problems.push({
          path: `/backends/${i}/endpoints/${j}/url`,
          message: `endpoint URL ${JSON.stringify(e.url)} is not a valid URL`,
        });
      }
      if (endpointIds.has(e.id)) {
        problems.push({ path: `/backends/${i}/endpoints/${j}/id`, message: `duplicate endpoint id ${e.id}` });
      }
      endpointIds.add(e.id);
    });
  });
  if (tenants.size !== s.tenants.length) problems.push({ path: '/tenants', message: 'duplicate tenant ids' });
  const hashes = new Set<string>();
  s.keys.forEach((k, i) => {
    if (!tenants.has(k.tenant)) {
      problems.push({ path: `/keys/${i}/tenant`, message: `key ${k.id} names unknown tenant ${k.tenant}` });
    }
    if (hashes.has(k.sha256))
      problems.push({ path: `/keys/${i}/sha256`, message: `key ${k.id} repeats a key hash` });
    hashes.add(k.sha256);
  });
  s.tenants.forEach((t, i) =>
    t.allowedBackends.forEach((b, j) => {
      if (!backends.has(b)) {
        problems.push({
          path: `/tenants/${i}/allowedBackends/${j}`,
          message: `tenant ${t.id} allows unknown backend ${b}`,
        });
      }
    }),
  );
  return problems.slice(0, MAX_PROBLEMS);
}

function refuse(path: string, message: string): ParseResult {
  return { ok: false, problems: [{ path, message }] };
}

/**
 * Holds the last good snapshot. A candidate that fails validation, or that is older than the one
 * held (by generatedAt, for a different revision), is refused and the current one kept.
 */
export class SnapshotStore {
  #current: Snapshot | null = null;
  #appliedAt = 0;

  get current(): Snapshot | null {
    return this.#current;
  }

  /** Milliseconds since the current snapshot was applied; null before the first. */
  ageMs(now = Date.now()): number | null {
    return this.#current ? now - this.#appliedAt : null;
  }

  offer(
    input: unknown,
    now = Date.now(),
  ):
    | { accepted: true; changed: boolean; snapshot: Snapshot }
    | { accepted: false; problems: SnapshotProblem[]; stale: boolean } {
    const parsed = parseSnapshot(input);
    if (!parsed.ok) return { accepted: false, problems: parsed.problems, stale: false };
    const next = parsed.snapshot;
    const current = this.#current;
    if (current && next.revision === current.revision)
      return { accepted: true, changed: false, snapshot: current };
    if (current && Date.parse(next.generatedAt) < Date.parse(current.generatedAt)) {
      return {
        accepted: false,
        stale: true,
        problems: [
          {
            path: '/generatedAt',
            message: `snapshot ${next.revision.slice(0, 12)} generated at ${next.generatedAt} is older than the current ${current.revision.slice(0, 12)} (${current.generatedAt})`,
          },
        ],
      };
    }
    this.#current = next;
    this.#appliedAt = now;
    return { accepted: true, changed: true, snapshot: next };
  }
}
