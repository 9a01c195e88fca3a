// When the Tenant reconciler writes status.usage: every read yields a new updatedAt, but the status is
// rewritten only when a figure (or anything else in the status) changed, or when the written updatedAt
// is older than the refresh bound. The clock is injected; the cluster suite (registration.test.ts) checks
// the same on the real API server by counting resourceVersion changes.
import { describe, expect, it } from 'vitest';
import type { TenantStatus } from '../../operator/api/v1alpha1/index.ts';
import { USAGE_REFRESH_MS, withoutUsageChurn } from '../../operator/controllers/tenant.ts';

const T0 = Date.parse('2030-05-10T12:00:00Z');
const at = (ms: number): Date => new Date(T0 + ms);
const iso = (ms: number): string =>
  at(ms)
    .toISOString()
    .replace(/\.\d+Z$/, 'Z');

function status(updatedAtMs: number, over: Partial<NonNullable<TenantStatus['usage']>> = {}): TenantStatus {
  return {
    observedGeneration: 1,
    conditions: [
      {
        type: 'Ready',
        status: 'True',
        reason: 'Ready',
        message: 'in the snapshot',
        lastTransitionTime: iso(-60_000),
        observedGeneration: 1,
      },
    ],
    keys: 2,
    usage: {
      period: 'Monthly',
      periodStart: '2030-05-01T00:00:00Z',
      periodEnd: '2030-06-01T00:00:00Z',
      requests: 10,
      inputTokens: 110,
      outputTokens: 55,
      creditsUsed: 130,
      creditsRemaining: 870,
      updatedAt: iso(updatedAtMs),
      ...over,
    },
  };
}

describe('Tenant status.usage writes', () => {
  it('keeps the written updatedAt while the figures are unchanged and it is younger than the refresh bound', () => {
    const written = status(0);
    for (const later of [30_000, 60_000, USAGE_REFRESH_MS - 1000]) {
      expect(withoutUsageChurn(written, status(later), at(later), USAGE_REFRESH_MS)).toEqual(written);
    }
  });

  it('writes the new updatedAt once the written one is as old as the refresh bound', () => {
    const next = status(USAGE_REFRESH_MS);
    expect(withoutUsageChurn(status(0), next, at(USAGE_REFRESH_MS), USAGE_REFRESH_MS)).toEqual(next);
  });

  it('writes at once, with the new updatedAt, when a figure changes', () => {
    for (const change of [
      { requests: 11 },
      { creditsUsed: 130.5, creditsRemaining: 869.5 },
      { outputTokens: 56 },
    ]) {
      const next = status(30_000, change);
      expect(withoutUsageChurn(status(0), next, at(30_000), USAGE_REFRESH_MS)).toEqual(next);
    }
  });

  it('writes the new updatedAt when a new period starts, even with the same figures', () => {
    const next = status(30_000, { periodStart: '2030-06-01T00:00:00Z', periodEnd: '2030-07-01T00:00:00Z' });
    expect(withoutUsageChurn(status(0), next, at(30_000), USAGE_REFRESH_MS)).toEqual(next);
  });

  it('writes the new updatedAt when something else in the status changes', () => {
    const next = { ...status(30_000), keys: 3 };
    expect(withoutUsageChurn(status(0), next, at(30_000), USAGE_REFRESH_MS)).toEqual(next);
  });

  it('writes when nothing was written yet, or the written updatedAt is unreadable or ahead of the clock', () => {
    const next = status(30_000);
    const { usage: _, ...withoutUsage } = status(0);
    expect(withoutUsageChurn(undefined, next, at(30_000), USAGE_REFRESH_MS)).toEqual(next);
    expect(withoutUsageChurn(withoutUsage, next, at(30_000), USAGE_REFRESH_MS)).toEqual(next);
    const garbled = status(0, { updatedAt: 'yesterday' });
    expect(withoutUsageChurn(garbled, next, at(30_000), USAGE_REFRESH_MS)).toEqual(next);
    expect(withoutUsageChurn(status(60_000), next, at(30_000), USAGE_REFRESH_MS)).toEqual(next);
  });
});
