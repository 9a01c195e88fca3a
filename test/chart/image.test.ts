// The container image cannot be built here (no Docker engine, and hadolint is not packaged for Debian
// bookworm), so this checks the Dockerfile's structure and that the image holds everything the two entry points
// import: every relative import is let in by .dockerignore, and every package they import is a production
// dependency (`npm ci --omit=dev`).
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { DATAPLANE_NODE_FLAGS } from '../../dataplane/node-flags.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};

/** .dockerignore as used here: `**` first, then `!pattern` re-includes, then plain patterns exclude again. */
function inImage(path: string): boolean {
  const lines = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const re = (glob: string): RegExp =>
    new RegExp(
      '^' +
        glob
          .replace(/[.+^${}()|[\]\\]/g, '\\$&')
          .replace(/\*\*\//g, '(.*/)?')
          .replace(/\*\*/g, '.*')
          .replace(/(?<!\.)\*/g, '[^/]*') +
        '$',
    );
  let included = true;
  for (const l of lines) {
    if (l.startsWith('!')) {
      if (re(l.slice(1)).test(path)) included = true;
    } else if (re(l).test(path)) included = false;
  }
  return included;
}

/** Every file reachable from an entry point through relative imports, and every package imported. */
function closure(entry: string): { files: Set<string>; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const todo = [resolve(ROOT, entry)];
  while (todo.length > 0) {
    const file = todo.pop()!;
    const rel = relative(ROOT, file);
    if (files.has(rel)) continue;
    files.add(rel);
    if (!file.endsWith('.ts')) continue;
    const text = readFileSync(file, 'utf8');
    const specs = [
      ...text.matchAll(/(?:^|\n)\s*(?:import|export)(?![^;]*\btype\b\s*\{)[^'";]*?from\s+'([^']+)'/g),
      ...text.matchAll(/\bimport\(\s*'([^']+)'\s*\)/g),
      ...text.matchAll(/^import\s+'([^']+)'/gm),
    ].map((m) => m[1]!);
    for (const m of text.matchAll(/new URL\('([^']+)', import\.meta\.url\)/g))
      todo.push(resolve(dirname(file), m[1]!));
    for (const s of specs) {
      if (s.startsWith('.')) todo.push(resolve(dirname(file), s));
      else if (!s.startsWith('node:'))
        packages.add(s.startsWith('@') ? s.split('/').slice(0, 2).join('/') : s.split('/')[0]!);
    }
  }
  return { files, packages };
}

describe('container image', () => {
  it('is multi-stage on Node 24 slim, installs production dependencies only and runs as a numeric non-root user', () => {
    const froms = [...dockerfile.matchAll(/^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/gm)];
    expect(froms.length).toBeGreaterThanOrEqual(2);
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:24-[a-z]+-slim$/m);
    expect(dockerfile).toMatch(/RUN npm ci --omit=dev/);
    expect(dockerfile).toMatch(/COPY --from=deps/);
    const user = /^USER\s+(\d+):(\d+)$/m.exec(dockerfile);
    expect(user).not.toBeNull();
    const values = parse(readFileSync(join(ROOT, 'charts', 'gpugate', 'values.yaml'), 'utf8')) as {
      podSecurityContext: { runAsUser: number };
    };
    expect(Number(user![1])).toBe(values.podSecurityContext.runAsUser);
    // The last instruction that sets the user comes after every COPY/RUN of the runtime stage.
    const runtime = dockerfile.slice(dockerfile.lastIndexOf('FROM '));
    expect(runtime.lastIndexOf('USER ')).toBeGreaterThan(runtime.lastIndexOf('COPY '));
    expect(dockerfile).not.toMatch(/^ADD /m);
  });

  it("starts the data plane with the Node.js flags of dataplane/node-flags.ts, as the chart's command and make run do", () => {
    const cmd = /^CMD\s+(\[.*\])$/m.exec(dockerfile);
    expect(cmd).not.toBeNull();
    expect(JSON.parse(cmd![1]!)).toEqual(['node', ...DATAPLANE_NODE_FLAGS, 'dataplane/main.ts']);
    const template = readFileSync(
      join(ROOT, 'charts', 'gpugate', 'templates', 'dataplane-deployment.yaml'),
      'utf8',
    );
    const command = /^\s+command:\s+(\[.*"dataplane\/main\.ts"\])$/m.exec(template);
    expect(command).not.toBeNull();
    expect(JSON.parse(command![1]!)).toEqual(['node', ...DATAPLANE_NODE_FLAGS, 'dataplane/main.ts']);
    // `make run` (standalone mode: the data plane runs in that process) passes the same flags.
    const makefile = readFileSync(join(ROOT, 'Makefile'), 'utf8');
    const flags = /^DATAPLANE_NODE_FLAGS := (.*)$/m.exec(makefile);
    expect(flags).not.toBeNull();
    expect(flags![1]!.trim().split(/\s+/)).toEqual([...DATAPLANE_NODE_FLAGS]);
    expect(makefile).toMatch(/^\ttsx \$\(DATAPLANE_NODE_FLAGS\) operator\/standalone\/main\.ts$/m);
  });

  it.each(['dataplane/main.ts', 'operator/main.ts'])(
    'holds every file %s imports, and only production packages',
    (entry) => {
      expect(existsSync(join(ROOT, entry))).toBe(true);
      const { files, packages } = closure(entry);
      const missing = [...files].filter((f) => !inImage(f));
      expect(missing, 'imported but left out by .dockerignore').toEqual([]);
      const dev = [...packages].filter((p) => !(p in pkg.dependencies));
      expect(dev, 'imported packages that npm ci --omit=dev does not install').toEqual([]);
      expect(copiedDirs().some((d) => entry.startsWith(d))).toBe(true);
    },
  );
});

function copiedDirs(): string[] {
  return [...dockerfile.matchAll(/^COPY --chown=\S+ (\S+) \.\/\S+$/gm)].map((m) => m[1]!);
}
