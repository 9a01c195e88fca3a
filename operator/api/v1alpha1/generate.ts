// Writes the CRDs from their TypeScript source into crds/ and the chart, or with --check fails when
// the files on disk differ (drift). Run through `make crds` / `make crds-check`.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { buildCrd, crdName } from './crd.ts';
import { KINDS } from './index.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const CRD_DIRS = ['crds', join('charts', 'gpugate', 'crds')];

const HEADER =
  '# Generated from operator/api/v1alpha1 by `make crds`. Do not edit: change the TypeScript source instead.\n';

/** File name (relative to a CRD dir) and content of every generated CRD. */
export function renderCrds(): Map<string, string> {
  const files = new Map<string, string>();
  for (const def of KINDS) {
    files.set(`${crdName(def)}.yaml`, HEADER + stringify(buildCrd(def), { lineWidth: 0 }));
  }
  return files;
}

/** Paths (relative to the repo) whose content differs from the source, with what differs. */
export function findDrift(repoRoot = root): string[] {
  const drift: string[] = [];
  for (const dir of CRD_DIRS) {
    for (const [name, content] of renderCrds()) {
      const path = join(repoRoot, dir, name);
      let onDisk: string | null;
      try {
        onDisk = readFileSync(path, 'utf8');
      } catch {
        onDisk = null;
      }
      if (onDisk === null) drift.push(`${relative(repoRoot, path)}: missing`);
      else if (onDisk !== content)
        drift.push(`${relative(repoRoot, path)}: differs from the TypeScript source`);
    }
  }
  return drift;
}

function main(): void {
  if (process.argv.includes('--check')) {
    const drift = findDrift();
    if (drift.length > 0) {
      console.error(
        `Generated CRDs drifted from operator/api/v1alpha1:\n  ${drift.join('\n  ')}\nRun \`make crds\`.`,
      );
      process.exit(1);
    }
    console.log(`crds: ${CRD_DIRS.length * KINDS.length} files match their source`);
    return;
  }
  for (const dir of CRD_DIRS) {
    mkdirSync(join(root, dir), { recursive: true });
    for (const [name, content] of renderCrds()) writeFileSync(join(root, dir, name), content);
  }
  console.log(`crds: wrote ${KINDS.length} CRDs into ${CRD_DIRS.join(' and ')}`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) main();
