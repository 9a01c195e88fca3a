// The request path's histograms (dataplane/metrics/histogram.ts) must export exactly what
// prom-client's Histogram exports for the same observations: dashboards and alerts read them.
import { Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { TallyHistogram } from '../../dataplane/metrics/histogram.ts';

const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
// On bounds, between them, above every bound, zero, tiny, and a label value that needs escaping.
const OBSERVATIONS: [string, number][] = [
  ['ns/a', 0.0042],
  ['ns/a', 0.005],
  ['ns/a', 0.0051],
  ['ns/a', 1],
  ['ns/a', 299.99],
  ['ns/a', 301],
  ['ns/a', 0],
  ['ns/b', 0.1 + 0.2],
  ['ns/b', 1e-9],
  ['', 2.5],
  ['we"ird\\name\nx', 7],
];

function both() {
  const theirs = new Registry();
  const ours = new Registry();
  const config = {
    name: 'gpugate_test_duration_seconds',
    help: 'A duration',
    labelNames: ['backend'] as const,
    buckets: BUCKETS,
  };
  const reference = new Histogram({ ...config, registers: [theirs] });
  const tally = new TallyHistogram({ ...config, registers: [ours] });
  return { theirs, ours, reference, tally };
}

describe('TallyHistogram', () => {
  it("exports the same text and JSON as prom-client's Histogram for the same observations", async () => {
    const { theirs, ours, reference, tally } = both();
    for (const [backend, v] of OBSERVATIONS) {
      reference.labels(backend).observe(v);
      tally.child(backend, { backend }).observe(v);
    }
    const text = await ours.metrics();
    expect(text).toBe(await theirs.metrics());
    expect(text).toContain('gpugate_test_duration_seconds_bucket{le="+Inf",backend="ns/a"} 7');
    expect(await ours.getMetricsAsJSON()).toEqual(await theirs.getMetricsAsJSON());
  });

  it('exports a label set only once it was observed, and again after a reset only once observed again', async () => {
    const { theirs, ours, reference, tally } = both();
    const child = tally.child('ns/a', { backend: 'ns/a' });
    tally.child('ns/never', { backend: 'ns/never' });
    reference.labels('ns/a');
    expect(await ours.metrics()).toBe(await theirs.metrics());
    child.observe(0.3);
    reference.labels('ns/a').observe(0.3);
    expect(await ours.metrics()).toBe(await theirs.metrics());
    ours.resetMetrics();
    theirs.resetMetrics();
    expect(await ours.metrics()).toBe(await theirs.metrics());
    child.observe(0.02);
    reference.labels('ns/a').observe(0.02);
    const text = await ours.metrics();
    expect(text).toBe(await theirs.metrics());
    expect(text).toContain('gpugate_test_duration_seconds_count{backend="ns/a"} 1');
    expect(text).not.toContain('ns/never');
  });
});
