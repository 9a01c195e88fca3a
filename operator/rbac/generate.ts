// Writes charts/gpugate/files/operator-rbac.yaml from operator/rbac/rules.ts (--check: fail on drift).
// The namespace is a placeholder the chart replaces with its release namespace.
import { readFileSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { stringify } from 'yaml';
import { rbacObjects } from './rules.ts';

export const RBAC_FILE = join(
  import.meta.dirname,
  '..',
  '..',
  'charts',
  'gpugate',
  'files',
  'operator-rbac.yaml',
);
export const NAMESPACE_PLACEHOLDER = 'GPUGATE_NAMESPACE';

export function renderRbac(): string {
  return (
    '# Generated from operator/rbac/rules.ts by `tsx operator/rbac/generate.ts`; do not edit.\n' +
    rbacObjects(NAMESPACE_PLACEHOLDER)
      .map((o) => stringify(o, { aliasDuplicateObjects: false, singleQuote: true }))
      .join('---\n')
  );
}

if (import.meta.main) {
  const text = renderRbac();
  if (process.argv.includes('--check')) {
    if (!existsSync(RBAC_FILE) || readFileSync(RBAC_FILE, 'utf8') !== text) {
      console.error(`${RBAC_FILE} differs from operator/rbac/rules.ts; run: tsx operator/rbac/generate.ts`);
      process.exit(1);
    }
  } else {
    mkdirSync(dirname(RBAC_FILE), { recursive: true });
    writeFileSync(RBAC_FILE, text);
  }
}
