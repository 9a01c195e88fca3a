// The chart's alerts: the rendered PrometheusRule passes `promtool check rules`, and each alert fires (and
// stays quiet) as test/chart/alerts.promtool.yaml says, under `promtool test rules`.
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { promtool, renderChart } from './helm.ts';

describe('alerts', () => {
  it('pass promtool check rules and each alert fires in its promtool unit test', async () => {
    const { objects } = await renderChart({ namespace: 'gpugate', monitoring: true });
    const rule = objects.find((o) => o.kind === 'PrometheusRule');
    expect(rule).toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), 'gpugate-rules-'));
    writeFileSync(join(dir, 'rules.yaml'), stringify(rule!.spec));
    expect(await promtool(['check', 'rules', 'rules.yaml'], dir)).toMatch(/SUCCESS: 14 rules found/);
    copyFileSync(join(import.meta.dirname, 'alerts.promtool.yaml'), join(dir, 'alerts.promtool.yaml'));
    expect(await promtool(['test', 'rules', 'alerts.promtool.yaml'], dir)).toContain('SUCCESS');
  });

  it('has a promtool test case for every alert of the chart', async () => {
    const { objects } = await renderChart({ namespace: 'gpugate', monitoring: true });
    const groups = (
      objects.find((o) => o.kind === 'PrometheusRule')!.spec as { groups: { rules: { alert: string }[] }[] }
    ).groups;
    const alerts = groups.flatMap((g) => g.rules.map((r) => r.alert));
    const tests = readFileSync(join(import.meta.dirname, 'alerts.promtool.yaml'), 'utf8');
    for (const a of alerts) expect(tests, a).toMatch(new RegExp(`alertname: ${a}\\n\\s+exp_alerts:`));
  });
});
