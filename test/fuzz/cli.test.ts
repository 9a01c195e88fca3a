// Property tests over the `gpugate` CLI: random argv built from its own words, options, bad numbers,
// bad names, dates, unreachable databases and clusters, run in-process (runCli) against a temp copy of
// the example manifests, plus a sample run as real processes (node operator/cli/main.ts). Invariants:
// runCli never throws; the exit code is one of the documented ones (0-4); a failure prints one clear
// `gpugate: ...` message (or a JSON error with -o json) and never a stack trace; bad numbers and names
// exit 2 naming the value. Every target is loopback or a temp folder, and the repository's examples/
// are never written.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COMMANDS } from '../../operator/cli/cli.ts';
import { runCliCaptured, type CliRun } from '../fixtures/cli.ts';

const RUNS = process.env.GPUGATE_SOAK === '1' ? 3000 : 300;
const ROOT = resolve(import.meta.dirname, '..', '..');
const EXAMPLES = join(ROOT, 'examples');
const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

function treeHash(dir: string): string {
  const h = createHash('sha256');
  for (const f of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!f.isFile()) continue;
    const p = join(f.parentPath, f.name);
    h.update(p).update(readFileSync(p));
  }
  return h.digest('hex');
}

const inProcess = (argv: string[]) => runCliCaptured(argv);

const STACK = /\n\s+at\s|node:internal|\bat async\b|^\s*at\s/m;
const RAW_ERROR = /^(TypeError|ReferenceError|RangeError|SyntaxError|Error):/m;

/** The invariants every run must keep. */
function checkRun(argv: string[], r: CliRun): void {
  const what = JSON.stringify(argv);
  expect([0, 1, 2, 3, 4], what).toContain(r.code);
  expect(r.stderr, what).not.toMatch(STACK);
  expect(r.stdout, what).not.toMatch(STACK);
  expect(r.stderr, what).not.toMatch(RAW_ERROR);
  if (r.code === 0) {
    expect(r.stdout.length, what).toBeGreaterThan(0);
    return;
  }
  expect(r.stderr.length, what).toBeGreaterThan(0);
  expect(r.stderr.length, what).toBeLessThan(4000);
  const json = /(^|\s)(-o|--output)(=|\s)json(\s|$)/.test(argv.join(' '));
  if (r.stderr.startsWith('{')) {
    expect(json, `${what}: JSON error without -o json`).toBe(true);
    const parsed = JSON.parse(r.stderr) as { error: { code: string; message: string } };
    expect(parsed.error.message.length, what).toBeGreaterThan(0);
  } else {
    // Notes (e.g. "no usage database") may precede the error; the error is the last line.
    const last = r.stderr.trimEnd().split('\n').at(-1)!;
    expect(last, what).toMatch(/^gpugate: \S/);
  }
}

describe('gpugate CLI under arbitrary argv', () => {
  let dir: string;
  let manifests: string;
  let secrets: string;
  let kubeconfig: string;
  let examplesBefore: string;

  beforeAll(() => {
    examplesBefore = treeHash(EXAMPLES);
    dir = mkdtempSync(join(tmpdir(), 'gpugate-cli-fuzz-'));
    manifests = join(dir, 'examples');
    cpSync(EXAMPLES, manifests, { recursive: true });
    secrets = join(dir, '.run', 'secrets.yaml');
    // A cluster that refuses connections (nothing listens on port 1) and a file that is no kubeconfig.
    kubeconfig = join(dir, 'kubeconfig');
    writeFileSync(
      kubeconfig,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]',
        'users: [{name: u, user: {token: t}}]',
        'contexts: [{name: x, context: {cluster: c, user: u, namespace: default}}]',
        'current-context: x',
        '',
      ].join('\n'),
    );
    writeFileSync(join(dir, 'garbage.yaml'), 'kind: [unclosed\n');
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
    expect(treeHash(EXAMPLES), 'the repository examples/ were changed').toBe(examplesBefore);
  });

  const word = fc.constantFrom(
    'tenant',
    'create',
    'info',
    'key',
    'quota',
    'set',
    'add',
    'usage',
    'show',
    'reset',
    'migrate',
    'status',
    'backend',
    'help',
    'Tenant',
  );
  const name = fc.constantFrom(
    'acme',
    'team-a',
    'default/team-a',
    'demo',
    'Bad_Name',
    'a/b/c',
    '',
    '..',
    'x'.repeat(300),
    'ténant',
    'gpg_0000000000',
    'ns/',
    '/x',
    '-acme',
  );
  const number = fc.constantFrom(
    '100',
    '2.5',
    '0',
    '-5',
    '1e3',
    'NaN',
    'Infinity',
    '0x10',
    '12x',
    '',
    '1e400',
    ' ',
  );
  const option = fc.constantFrom(
    '--credits',
    '--period',
    'daily',
    'Weekly',
    'none',
    '--display-name',
    '--name',
    '--description',
    '--expires-at',
    '2020-13-45T00:00:00Z',
    'tomorrow',
    '2030-01-01T00:00:00Z',
    '--reference',
    '--from',
    '--to',
    '2026-02-30',
    '2026-01-01',
    '--key',
    '-A',
    '--all-namespaces',
    '-o',
    '--output',
    'json',
    'yaml',
    '--output=json',
    '-n',
    '--namespace',
    'kube-system',
    '--help',
    '-h',
    '--bogus',
    '-',
    '--database-url',
    'postgres://127.0.0.1:1/gpugate',
    'not-a-url',
    '--admin-url',
    'http://127.0.0.1:1',
    '--operator-url',
    '--admin-token',
    'token',
    '--gateway-admin',
    'ep=http://127.0.0.1:1',
    '=',
  );
  // Either free word soup, or a real command with the right number of arguments (so the run gets
  // past argument parsing into the targets and the database) followed by random options.
  const lead = fc.oneof(
    fc.array(word, { maxLength: 3 }),
    fc
      .constantFrom(...COMMANDS)
      .chain((c) =>
        fc
          .tuple(...c.args.map((a) => (a === '<credits>' ? number : name)))
          .map((args) => [...c.path, ...(args as string[])]),
      ),
  );
  const argvArb = fc
    .tuple(
      lead,
      fc.oneof(
        fc.constant([] as string[]),
        fc.array(option, { maxLength: 2 }),
        fc.array(fc.oneof(name, number, option, word), { maxLength: 6 }),
      ),
      fc.constantFrom('none', 'kubeconfig', 'missing-kubeconfig', 'garbage-kubeconfig'),
    )
    .map(([lead, rest, cluster]) => {
      const extra =
        cluster === 'kubeconfig'
          ? ['--kubeconfig', kubeconfig]
          : cluster === 'missing-kubeconfig'
            ? ['--kubeconfig', join(dir, 'nope')]
            : cluster === 'garbage-kubeconfig'
              ? ['--kubeconfig', join(dir, 'garbage.yaml')]
              : [];
      // The temp manifests always come last, so no argv can reach the repository's examples/.
      return [...lead, ...rest, ...extra, '--manifests', manifests, '--secrets-file', secrets];
    });

  it('any argv: a documented exit code and a clear message, never a stack trace or a throw', async () => {
    const codes: Record<number, number> = {};
    await fc.assert(
      fc.asyncProperty(argvArb, async (argv) => {
        const r = await inProcess(argv);
        codes[r.code] = (codes[r.code] ?? 0) + 1;
        checkRun(argv, r);
      }),
      { numRuns: RUNS, seed: 9, interruptAfterTimeLimit: 120_000 },
    );
    console.log(`cli fuzz: ${RUNS} runs, exit codes ${JSON.stringify(codes)}`);
    expect(Object.keys(codes).length).toBeGreaterThan(1);
  });

  it('a bad credits number exits 2 and names the argument and the value', async () => {
    const bad = fc.oneof(
      fc.constantFrom(
        'NaN',
        'Infinity',
        '-Infinity',
        '0x10',
        '12x',
        '',
        ' ',
        '1e400',
        '1,5',
        '--1',
        '5 credits',
      ),
      fc.stringMatching(/^[0-9a-z.,_%$]{1,12}$/).filter((s) => Number.isNaN(Number(s))),
      fc.double({ max: -0.001, noNaN: true, noDefaultInfinity: true }).map(String),
    );
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('set', 'add'), bad, async (sub, raw) => {
        const argv = ['quota', sub, 'acme', raw, '--manifests', manifests, '--secrets-file', secrets];
        const r = await inProcess(argv);
        checkRun(argv, r);
        expect(r.code, JSON.stringify(argv)).toBe(2);
        const shown = r.stderr.includes(JSON.stringify(raw)) || r.stderr.includes(`'${raw}'`);
        expect(shown, `${r.stderr} does not show ${JSON.stringify(raw)}`).toBe(true);
        expect(r.stderr).toMatch(/<credits>|--|option/);
      }),
      { numRuns: Math.min(RUNS, 200), seed: 11 },
    );
  });

  it('a bad name exits 2 and names the value', async () => {
    const bad = fc
      .stringMatching(/^[A-Za-z0-9_. -]{1,40}$/)
      .filter((s) => !NAME.test(s) && !s.startsWith('-') && s.length <= 253);
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('create', 'info'), bad, async (sub, raw) => {
        const argv = ['tenant', sub, raw, '--manifests', manifests, '--secrets-file', secrets];
        const r = await inProcess(argv);
        checkRun(argv, r);
        expect(r.code, JSON.stringify(argv)).toBe(2);
        expect(r.stderr).toContain(JSON.stringify(raw));
      }),
      { numRuns: Math.min(RUNS, 200), seed: 13 },
    );
  });

  it('as a process: the same invariants hold for a sample of argv (exit status and stderr)', async () => {
    const sample = fc.sample(argvArb, { numRuns: 2, seed: 5 });
    sample.push(
      ['quota', 'set', 'acme', '12x', '--manifests', manifests],
      ['tenant', 'create', 'Bad_Name', '--manifests', manifests],
      ['usage', 'show', 'demo', '--manifests', manifests, '--database-url', 'postgres://127.0.0.1:1/x'],
      ['tenant', 'info', 'demo', '--kubeconfig', kubeconfig],
    );
    for (const argv of sample) {
      const r = await new Promise<CliRun>((done) => {
        execFile(
          process.execPath,
          [join(ROOT, 'operator/cli/main.ts'), ...argv],
          { timeout: 30_000, env: { PATH: process.env.PATH, HOME: process.env.HOME } },
          (err, stdout, stderr) => {
            const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
            done({ code, stdout, stderr });
          },
        );
      });
      checkRun(argv, r);
    }
  }, 300_000);
});
