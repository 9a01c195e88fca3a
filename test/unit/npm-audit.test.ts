// The dependency-audit policy of .ci/npm-audit.ts: which advisories fail CI, what the allow-list excuses
// and for how long, and that an audit endpoint that cannot be used never makes CI flaky. The report below
// has the shape of `npm audit --json` (auditReportVersion 2); the unavailable case is npm's real answer on
// our machines (the registry proxy answers 405 to the bulk advisory endpoint) and, end to end, npm itself
// run against a registry on a closed loopback port.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  advisoriesOf,
  evaluate,
  isReport,
  parseAllowlist,
  unavailableReason,
  type AllowEntry,
} from '../../.ci/npm-audit.ts';

const ROOT = resolve(import.meta.dirname, '..', '..');
const SCRIPT = join(ROOT, '.ci', 'npm-audit.ts');

const report = {
  auditReportVersion: 2,
  vulnerabilities: {
    fastlib: {
      name: 'fastlib',
      severity: 'critical',
      isDirect: true,
      via: [
        {
          source: 1100001,
          name: 'fastlib',
          dependency: 'fastlib',
          title: 'Prototype pollution',
          url: 'https://github.com/advisories/GHSA-aaaa-bbbb-cccc',
          severity: 'critical',
          range: '<2.0.1',
        },
        'tinydep',
      ],
      effects: [],
      range: '<2.0.1',
      nodes: ['node_modules/fastlib'],
      fixAvailable: true,
    },
    tinydep: {
      name: 'tinydep',
      severity: 'high',
      isDirect: false,
      via: [
        {
          source: 1100002,
          name: 'tinydep',
          dependency: 'tinydep',
          title: 'ReDoS',
          url: 'https://github.com/advisories/GHSA-dddd-eeee-ffff',
          severity: 'high',
          range: '<1.4.0',
        },
      ],
      effects: ['fastlib'],
      range: '<1.4.0',
      nodes: ['node_modules/tinydep'],
      fixAvailable: false,
    },
    chatty: {
      name: 'chatty',
      severity: 'moderate',
      isDirect: true,
      via: [
        {
          source: 1100003,
          name: 'chatty',
          dependency: 'chatty',
          title: 'Log injection',
          url: 'https://github.com/advisories/GHSA-gggg-hhhh-jjjj',
          severity: 'moderate',
          range: '*',
        },
      ],
      effects: [],
      range: '*',
      nodes: ['node_modules/chatty'],
      fixAvailable: false,
    },
  },
  metadata: { vulnerabilities: { info: 0, low: 0, moderate: 1, high: 1, critical: 1, total: 3 } },
};

/** What npm 11 printed here for `npm audit --omit=dev --json` (addresses replaced). */
const NPM_405 = {
  message: '405 Method Not Allowed - POST https://registry.invalid/-/npm/v1/security/advisories/bulk',
  method: 'POST',
  uri: 'https://registry.invalid/-/npm/v1/security/advisories/bulk',
  statusCode: 405,
  body: '',
  error: { summary: '', detail: '' },
};

const allow = (over: Partial<AllowEntry>): AllowEntry => ({
  id: 'GHSA-dddd-eeee-ffff',
  package: 'tinydep',
  reason: 'only reachable through a CLI flag we never pass',
  expires: '2026-12-31',
  ...over,
});

function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string }> {
  return new Promise((done) => {
    execFile(
      process.execPath,
      [SCRIPT, ...args],
      { timeout: 120_000, env: { ...process.env, ...env } },
      (err, stdout, stderr) =>
        done({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, out: stdout + stderr }),
    );
  });
}

describe('npm audit policy', () => {
  it('reads one advisory per id and package from the report, not the dependency-name strings', () => {
    expect(advisoriesOf(report).map((a) => `${a.severity} ${a.id} ${a.package}`)).toEqual([
      'critical GHSA-aaaa-bbbb-cccc fastlib',
      'high GHSA-dddd-eeee-ffff tinydep',
      'moderate GHSA-gggg-hhhh-jjjj chatty',
    ]);
  });

  it('fails on high and critical advisories that are not allow-listed, naming them and what to do', () => {
    const v = evaluate(advisoriesOf(report), [], '2026-11-21');
    expect(v.failures).toHaveLength(2);
    expect(v.failures[0]).toContain('critical GHSA-aaaa-bbbb-cccc in fastlib: Prototype pollution');
    expect(v.failures[0]).toContain('allow-list it with a reason and an expiry');
    expect(v.notes).toEqual([
      expect.stringContaining('not failing (moderate): moderate GHSA-gggg-hhhh-jjjj in chatty'),
    ]);
  });

  it('an allow-list entry excuses its advisory until it expires, then fails again', () => {
    const list = [allow({})];
    const before = evaluate(advisoriesOf(report), list, '2026-11-21');
    expect(before.allowed).toEqual([
      expect.stringContaining('allowed until 2026-12-31: only reachable through a CLI flag'),
    ]);
    expect(before.failures.join('\n')).not.toContain('tinydep');
    const after = evaluate(advisoriesOf(report), list, '2027-01-01');
    expect(after.failures.join('\n')).toContain('its allow-list entry expired on 2026-12-31');
  });

  it('an entry for another package does not excuse the advisory; stale and far-future entries are called out', () => {
    const v = evaluate(
      advisoriesOf(report),
      [allow({ package: 'otherdep' }), allow({ id: 'GHSA-zzzz-zzzz-zzzz', expires: '2027-12-31' })],
      '2026-11-21',
    );
    expect(v.failures.join('\n')).toContain('high GHSA-dddd-eeee-ffff in tinydep');
    expect(v.failures.join('\n')).toContain('expires 2027-12-31, more than 90 days ahead');
    expect(v.notes.join('\n')).toContain('stale allow-list entry GHSA-zzzz-zzzz-zzzz');
  });

  it('refuses a malformed allow-list, naming the entry and the field', () => {
    expect(() => parseAllowlist('[{"id": "GHSA-x", "package": "p", "reason": ""}]', 'list.json')).toThrow(
      'list.json entry 0: "reason" must be a non-empty string, got ""',
    );
    expect(() =>
      parseAllowlist(
        '[{"id": "GHSA-x", "package": "p", "reason": "r", "expires": "next year"}]',
        'list.json',
      ),
    ).toThrow('list.json entry 0 (GHSA-x): "expires" must be a date YYYY-MM-DD, got "next year"');
    expect(parseAllowlist('[]', 'list.json')).toEqual([]);
  });

  it("tells npm's error answer from a report, and says why without the registry's address", () => {
    expect(isReport(report)).toBe(true);
    expect(isReport(NPM_405)).toBe(false);
    const why = unavailableReason(JSON.stringify(NPM_405), '', 1);
    expect(why).toContain('HTTP 405');
    expect(why).not.toContain('registry.invalid');
  });

  describe('the script', () => {
    let dir: string;
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), 'gpugate-audit-'));
      writeFileSync(join(dir, 'report.json'), JSON.stringify(report));
      writeFileSync(join(dir, '405.json'), JSON.stringify(NPM_405));
      writeFileSync(join(dir, 'allow.json'), JSON.stringify([allow({})]));
      writeFileSync(
        join(dir, 'allow-both.json'),
        JSON.stringify([allow({}), allow({ id: 'GHSA-aaaa-bbbb-cccc', package: 'fastlib' })]),
      );
    });
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('exits 1 on a failing report and 0 once every high and critical advisory is allowed', async () => {
      const failing = await run([
        '--report',
        join(dir, 'report.json'),
        '--allowlist',
        join(dir, 'allow.json'),
        '--today',
        '2026-11-21',
      ]);
      expect(failing.code).toBe(1);
      expect(failing.out).toContain('FAIL: critical GHSA-aaaa-bbbb-cccc in fastlib');
      const passing = await run([
        '--report',
        join(dir, 'report.json'),
        '--allowlist',
        join(dir, 'allow-both.json'),
        '--today',
        '2026-11-21',
      ]);
      expect(passing.code).toBe(0);
      expect(passing.out).toContain('3 advisories in production dependencies');
    });

    it('an unusable endpoint skips with a warning (exit 0), or fails when GPUGATE_AUDIT_REQUIRED=1', async () => {
      const skipped = await run(['--report', join(dir, '405.json'), '--allowlist', join(dir, 'allow.json')]);
      expect(skipped.code).toBe(0);
      expect(skipped.out).toContain('SKIPPED');
      const required = await run(
        ['--report', join(dir, '405.json'), '--allowlist', join(dir, 'allow.json')],
        {
          GPUGATE_AUDIT_REQUIRED: '1',
        },
      );
      expect(required.code).toBe(1);
    });

    it('end to end: npm audit against a registry that refuses connections is skipped, bounded in attempts', async () => {
      const env = {
        npm_config_registry: 'http://127.0.0.1:1/',
        npm_config_fetch_retries: '0',
        npm_config_audit: 'true',
      };
      const r = await run(['--attempts', '1'], env);
      expect(r.code, r.out).toBe(0);
      expect(r.out).toContain('attempt 1/1: the audit endpoint could not be used');
      expect(r.out).toContain('SKIPPED');
      expect(r.out).toContain('ECONNREFUSED');
      // Registry URLs may carry credentials (https://user:token@...): never printed.
      expect(r.out).not.toContain('http://127.0.0.1:1/');
    });
  });
});
