// The chart's RBAC file is generated from operator/rbac/rules.ts; this fails when they drift apart, and
// pins what the operator may never do.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { RBAC_FILE, renderRbac } from '../../operator/rbac/generate.ts';
import { CLUSTER_RULES, NAMESPACE_RULES } from '../../operator/rbac/rules.ts';

describe('operator RBAC', () => {
  it('charts/gpugate/files/operator-rbac.yaml matches operator/rbac/rules.ts (run: tsx operator/rbac/generate.ts)', () => {
    expect(readFileSync(RBAC_FILE, 'utf8')).toBe(renderRbac());
  });

  it('grants no delete, no wildcard, no Secret update, and leases only in the namespace Role', () => {
    for (const rule of [...CLUSTER_RULES, ...NAMESPACE_RULES]) {
      expect(rule.verbs).not.toContain('*');
      expect(rule.verbs).not.toContain('delete');
      expect(rule.resources).not.toContain('*');
      if (rule.resources.includes('secrets')) expect(rule.verbs).not.toContain('update');
    }
    expect(CLUSTER_RULES.some((r) => r.resources.includes('leases'))).toBe(false);
  });
});
