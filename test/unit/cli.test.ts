// The gpugate CLI against a standalone manifests folder in a temp dir: the YAML it writes (comments
// kept), that the compiler accepts the result, the key printed once and nowhere else, and the
// error messages and exit codes for bad input.
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hashApiKey } from '../../dataplane/auth/keys.ts';
import { EXIT } from '../../operator/cli/command.ts';
import { compileSnapshot } from '../../operator/snapshot/compile.ts';
import { loadManifestDir } from '../../operator/snapshot/manifests.ts';
import { ensureKeySecrets } from '../../operator/standalone/secrets.ts';
import { runCliCaptured } from '../fixtures/cli.ts';

const EXAMPLES = resolve(import.meta.dirname, '..', '..', 'examples');

const gpugate = (...argv: string[]) => runCliCaptured(argv);

describe('gpugate CLI on a manifests folder', () => {
  let dir: string;
  let manifests: string;
  let secrets: string;
  let target: string[];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'gpugate-cli-'));
    manifests = join(dir, 'examples');
    cpSync(EXAMPLES, manifests, { recursive: true });
    secrets = join(dir, '.run', 'secrets.yaml');
    target = ['--manifests', manifests];
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  function compiled() {
    const set = loadManifestDir(manifests);
    const { secrets: stored } = ensureKeySecrets(secrets, set);
    return compileSnapshot({ ...set, secrets: stored, settings: { replicas: 1 }, now: new Date() });
  }

  it('creates a tenant by appending a document and keeps every comment of the file', async () => {
    const before = readFileSync(join(manifests, 'tenants.yaml'), 'utf8');
    const r = await gpugate('tenant', 'create', 'acme', '--credits', '500', '--period', 'daily', ...target);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(r.stdout).toContain('created Tenant default/acme (500 credits daily)');
    const after = readFileSync(join(manifests, 'tenants.yaml'), 'utf8');
    expect(after.startsWith(before)).toBe(true);
    expect(after.slice(before.length)).toBe(
      [
        '---',
        'apiVersion: gpugate.io/v1alpha1',
        'kind: Tenant',
        'metadata:',
        '  name: acme',
        '  namespace: default',
        'spec:',
        '  quota:',
        '    credits: 500',
        '    period: Daily',
        '',
      ].join('\n'),
    );
    const { snapshot, problems } = compiled();
    expect(problems).toEqual([]);
    expect(snapshot.tenants.find((t) => t.id === 'default/acme')?.quota).toEqual({
      credits: 500,
      period: 'Daily',
    });
  });

  it('sets a quota in place: the changed values and nothing else, comments kept', async () => {
    const r = await gpugate('quota', 'set', 'trial', '12.5', '--period', 'Monthly', ...target);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('quota of tenant default/trial: 5 credits Daily -> 12.5 credits Monthly\n');
    const text = readFileSync(join(manifests, 'tenants.yaml'), 'utf8');
    expect(text).toContain('# small daily quota (so you can watch `quota_exceeded` happen).');
    expect(text).toContain('  quota:\n    credits: 12.5\n    period: Monthly\n  failOpen: false');
    expect(text).toContain('  quota:\n    credits: 100000\n    period: Monthly'); // research untouched
    expect(compiled().snapshot.tenants.find((t) => t.id === 'default/trial')?.quota).toEqual({
      credits: 12.5,
      period: 'Monthly',
    });
  });

  it('prints a created key exactly once, stores it only in the secrets file, and finds it by value and prefix', async () => {
    const r = await gpugate('key', 'create', 'research', '--name', 'research-ci', ...target);
    expect(r.code).toBe(0);
    const key = /gpg_[0-9A-Za-z]{36}/.exec(r.stdout)?.[0] as string;
    expect(r.stdout.split(key)).toHaveLength(2); // once
    expect(r.stderr).not.toContain(key);
    for (const f of ['apikeys.yaml', 'tenants.yaml', 'gpubackend-simulator.yaml']) {
      expect(readFileSync(join(manifests, f), 'utf8')).not.toContain(key);
    }
    expect(readFileSync(secrets, 'utf8')).toContain(`key: ${key}`);
    const { snapshot, problems } = compiled();
    expect(problems).toEqual([]);
    expect(snapshot.keys.find((k) => k.id === 'default/research-ci')?.sha256).toBe(hashApiKey(key));

    for (const needle of [key, key.slice(0, 10)]) {
      const info = await gpugate('key', 'info', needle, ...target, '-o', 'json');
      expect(info.code).toBe(0);
      expect(info.stdout).not.toContain(key);
      expect(JSON.parse(info.stdout)).toMatchObject({
        apiKey: 'default/research-ci',
        tenant: 'default/research',
        prefix: key.slice(0, 12),
      });
    }
    const json = await gpugate('key', 'create', 'research', ...target, '--output', 'json');
    expect(JSON.parse(json.stdout)).toMatchObject({
      tenant: 'default/research',
      key: expect.stringMatching(/^gpg_/),
    });
  });

  it('answers bad input with the argument, the value, what is allowed and an exit code', async () => {
    const cases: [string[], number, string][] = [
      [
        ['quota', 'set', 'trial', '12x'],
        EXIT.usage,
        '<credits> must be a number of at least 0 (e.g. 100000 or 2.5), got "12x"',
      ],
      [['quota', 'set', 'trial', '-1'], EXIT.usage, 'got "-1"'],
      [
        ['tenant', 'create', 'x', '--credits', '5', '--period', 'weekly'],
        EXIT.usage,
        '--period must be one of None, Daily, Monthly, got "weekly"',
      ],
      [['tenant', 'create', 'Bad_Name'], EXIT.usage, 'tenant name "Bad_Name" is not a valid name'],
      [
        ['key', 'create', 'research', '--expires-at', '2030-01-31T23:59:59'],
        EXIT.usage,
        '--expires-at must be a date and time with a time zone (RFC 3339), such as 2030-01-31T23:59:59Z or 2030-01-31T18:00:00-05:00, got "2030-01-31T23:59:59"',
      ],
      [
        ['key', 'create', 'research', '--expires-at', '2030-02-30T00:00:00Z'],
        EXIT.usage,
        'got "2030-02-30T00:00:00Z"',
      ],
      [['tenant', 'create', 'research'], EXIT.conflict, 'Tenant default/research already exists in'],
      [['tenant', 'info', 'nobody'], EXIT.notFound, 'tenant default/nobody not found in manifests'],
      [['key', 'create', 'nobody'], EXIT.notFound, 'tenant default/nobody not found'],
      [['key', 'info', 'gpg_zzzzzzzz'], EXIT.notFound, 'has a key starting with gpg_zzzzzzzz'],
      [
        ['key', 'info', 'sk-123'],
        EXIT.usage,
        'give a whole key or a prefix of at least 8 characters starting with gpg_',
      ],
      [['quota', 'add', 'research', '10'], EXIT.failure, 'set DATABASE_URL or give --database-url'],
      [['quota', 'add', 'research', '0'], EXIT.usage, '<credits> must be a number greater than 0'],
      [['tenant', 'create'], EXIT.usage, 'missing <name> (usage: gpugate tenant create <name> [options])'],
      [['tenant', 'create', 'a', 'b'], EXIT.usage, 'too many arguments: "b"'],
      [['tenant', 'create', 'a', '--bogus'], EXIT.usage, "Unknown option '--bogus'"],
      [['tenant', 'fly'], EXIT.usage, 'unknown command "tenant fly"; tenant has: create, info'],
      [['tenant', 'info', 'research', '-o', 'yaml'], EXIT.usage, '--output must be text or json, got "yaml"'],
    ];
    for (const [argv, code, message] of cases) {
      const r = await gpugate(...argv, ...target);
      expect({ argv, code: r.code }).toEqual({ argv, code });
      expect(r.stderr).toContain(message);
      expect(r.stdout).toBe('');
    }
    const json = await gpugate('tenant', 'info', 'nobody', ...target, '-o', 'json');
    expect(JSON.parse(json.stderr)).toEqual({
      error: { code: 'not_found', message: `tenant default/nobody not found in manifests ${manifests}` },
    });
  });

  it('prints help per command and an overview', async () => {
    const help = await gpugate('quota', 'add', '--help');
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('gpugate quota add <tenant> <credits> [options]');
    expect(help.stdout).toContain('--reference REF');
    const all = await gpugate('--help');
    expect(all.stdout).toContain('usage show <tenant>');
    expect((await gpugate()).code).toBe(EXIT.usage);
  });
});
