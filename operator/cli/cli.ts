// The `gpugate` command line: finds the command from the leading words, parses its options with
// node:util parseArgs (strict: unknown options are errors), runs it against the chosen target and
// prints text or JSON. New command groups (e.g. `status`, issue 10) add a file exporting Command[]
// and one entry in COMMANDS.
import { dirname, join, resolve } from 'node:path';
import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import type pg from 'pg';
import { CliError, EXIT, openPool, usageError, type Command, type Context } from './command.ts';
import { keyCommands } from './key.ts';
import { KubeTarget } from './kube-target.ts';
import { ManifestsTarget } from './manifests-target.ts';
import { migrateCommands } from './migrate.ts';
import { quotaCommands } from './quota.ts';
import type { Target } from './target.ts';
import { statusCommands } from './status.ts';
import { tenantCommands } from './tenant.ts';
import { usageCommands } from './usage.ts';

export const COMMANDS: readonly Command[] = [
  ...tenantCommands,
  ...keyCommands,
  ...quotaCommands,
  ...usageCommands,
  ...migrateCommands,
  ...statusCommands,
];

const ROOT = resolve(import.meta.dirname, '..', '..');

const GLOBAL_OPTIONS = {
  kubeconfig: { type: 'string' },
  manifests: { type: 'string' },
  'secrets-file': { type: 'string' },
  namespace: { type: 'string', short: 'n' },
  output: { type: 'string', short: 'o' },
  'database-url': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsOptionsConfig;

const GLOBAL_HELP = [
  'target (where Tenants, ApiKeys and key Secrets are read and written):',
  '  --kubeconfig FILE     a cluster (also KUBECONFIG); writes are server-side apply as gpugate-cli',
  '  --manifests DIR       a standalone manifests folder (default examples/ when no kubeconfig is set)',
  '  --secrets-file FILE   standalone key Secrets (default GPUGATE_RUN_DIR/secrets.yaml, else DIR/../.run/secrets.yaml)',
  "  -n, --namespace NS    namespace of the objects (default: the kubeconfig context's, else default)",
  'usage database:',
  '  --database-url URL    Postgres of the usage events (also DATABASE_URL)',
  'output:',
  '  -o, --output FORMAT   text (default) or json',
  '  -h, --help            help for a command',
];

const EXIT_HELP = 'exit codes: 0 done, 1 failed, 2 bad arguments, 3 not found, 4 already exists';

export interface CliIo {
  stdout(text: string): void;
  stderr(text: string): void;
  env: NodeJS.ProcessEnv;
  /** stdout is a terminal (colour in tables unless NO_COLOR); false when absent. */
  tty?: boolean;
}

const processIo: CliIo = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  env: process.env,
  tty: process.stdout.isTTY === true,
};

function commandLine(c: Command): string {
  return ['gpugate', ...c.path, ...c.args, '[options]'].join(' ');
}

function overview(): string {
  const width = Math.max(...COMMANDS.map((c) => [...c.path, ...c.args].join(' ').length));
  return [
    'gpugate: manage gpugate tenants, API keys, quotas and usage',
    '',
    'usage: gpugate <command> [arguments] [options]',
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${[...c.path, ...c.args].join(' ').padEnd(width)}  ${c.summary}`),
    '',
    ...GLOBAL_HELP,
    '',
    EXIT_HELP,
    "'gpugate <command> --help' shows a command's own options.",
    '',
  ].join('\n');
}

function commandHelp(c: Command): string {
  return [
    `${commandLine(c)}`,
    '',
    c.summary,
    '',
    ...(c.optionHelp?.length ? ['options:', ...c.optionHelp.map((l) => `  ${l}`), ''] : []),
    ...GLOBAL_HELP,
    '',
    EXIT_HELP,
    '',
  ].join('\n');
}

/** The command whose path is the longest prefix of the leading words. */
function findCommand(words: string[]): Command | null {
  let best: Command | null = null;
  for (const c of COMMANDS) {
    if (c.path.every((w, i) => words[i] === w) && (!best || c.path.length > best.path.length)) best = c;
  }
  return best;
}

/** Runs one command line; resolves to the exit code. Never calls process.exit. */
export async function runCli(argv: string[], io: CliIo = processIo): Promise<number> {
  const leading: string[] = [];
  for (const a of argv) {
    if (a.startsWith('-')) break;
    leading.push(a);
  }
  const command = findCommand(leading);
  let output: 'text' | 'json' =
    argv.includes('json') && /(^|\s)(-o|--output)(=|\s)json/.test(argv.join(' ')) ? 'json' : 'text';
  const fail = (err: CliError): number => {
    io.stderr(
      output === 'json'
        ? `${JSON.stringify({ error: { code: err.code, message: err.message } })}\n`
        : `gpugate: ${err.message}\n`,
    );
    return err.exitCode;
  };

  if (!command) {
    if (leading.length === 0 || argv.includes('--help') || argv.includes('-h') || leading[0] === 'help') {
      const asked = argv.includes('--help') || argv.includes('-h') || leading[0] === 'help';
      if (asked) {
        io.stdout(overview());
        return EXIT.ok;
      }
      // No command: a usage error, so the overview goes to stderr, followed by the error itself, and
      // a script reading stdout gets nothing instead of help text.
      if (output === 'text') io.stderr(overview());
      return fail(usageError('no command given (gpugate --help lists them)'));
    }
    const group = COMMANDS.filter((c) => c.path[0] === leading[0]);
    const hint =
      group.length > 0
        ? `; ${leading[0]} has: ${group.map((c) => c.path.slice(1).join(' ')).join(', ')}`
        : `; commands: ${[...new Set(COMMANDS.map((c) => c.path[0]))].join(', ')}`;
    return fail(usageError(`unknown command "${leading.join(' ')}"${hint} (gpugate --help)`));
  }

  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    const parsed = parseArgs({
      args: argv.slice(command.path.length),
      options: { ...GLOBAL_OPTIONS, ...command.options },
      allowPositionals: true,
      strict: true,
    });
    values = parsed.values as Record<string, string | boolean | undefined>;
    positionals = parsed.positionals;
  } catch (err) {
    // parseArgs reads "-0.5" or "-Infinity" as a group of short options and names only the first
    // ("-0", "-I"); show the argument as it was given, and say what a negative number is wrong for.
    const short = /Unknown option '(-[^-'][^']*)'/.exec((err as Error).message);
    if (short) {
      const given =
        argv.slice(command.path.length).find((a) => a.startsWith(short[1]!) && !a.startsWith('--')) ??
        short[1]!;
      if (/^-(\d|\.\d|Infinity|NaN)/.test(given)) {
        return fail(
          usageError(
            `${command.args.at(-1) ?? 'the value'} must be a number of at least 0, got ${JSON.stringify(given)}`,
          ),
        );
      }
      return fail(
        usageError(
          `unknown option ${JSON.stringify(given)} (${commandLine(command)}; --help lists the options)`,
        ),
      );
    }
    return fail(
      usageError(
        `${(err as Error).message
          .replace(/\. To specify a positional.*$/s, '')
          .replace(/\s*To specify an option argument.*$/s, '')
          .replace(/\s*\n\s*/g, ' ')} (${commandLine(command)}; --help lists the options)`,
      ),
    );
  }
  if (values.help) {
    io.stdout(commandHelp(command));
    return EXIT.ok;
  }
  if (values.output !== undefined) {
    if (values.output !== 'text' && values.output !== 'json') {
      output = 'text';
      return fail(usageError(`--output must be text or json, got ${JSON.stringify(values.output)}`));
    }
    output = values.output;
  } else output = 'text';
  if (positionals.length !== command.args.length) {
    const missing = command.args.slice(positionals.length);
    return fail(
      usageError(
        positionals.length < command.args.length
          ? `missing ${missing.join(' ')} (usage: ${commandLine(command)})`
          : `too many arguments: ${positionals
              .slice(command.args.length)
              .map((p) => JSON.stringify(p))
              .join(' ')} (usage: ${commandLine(command)})`,
      ),
    );
  }

  let target: Target | null = null;
  let pool: pg.Pool | null = null;
  let kc: KubeConfig | null | undefined;
  const kubeconfig = (): KubeConfig | null => {
    if (kc !== undefined) return kc;
    const file = typeof values.kubeconfig === 'string' ? values.kubeconfig : undefined;
    if (typeof values.manifests === 'string' || (!file && !io.env.KUBECONFIG)) return (kc = null);
    kc = new KubeConfig();
    try {
      if (file) kc.loadFromFile(file);
      else kc.loadFromDefault();
    } catch (err) {
      throw new CliError(
        `cannot read the kubeconfig ${file ?? io.env.KUBECONFIG ?? ''}: ${(err as Error).message}`,
      );
    }
    return kc;
  };
  const databaseUrl =
    typeof values['database-url'] === 'string' ? values['database-url'] : io.env.DATABASE_URL;
  const ctx: Context = {
    output,
    namespace: () => {
      if (typeof values.namespace === 'string') return values.namespace;
      const k = kubeconfig();
      return (k && KubeTarget.contextNamespace(k)) || 'default';
    },
    target: async () => {
      if (target) return target;
      if (typeof values.manifests === 'string' && typeof values.kubeconfig === 'string') {
        throw usageError('give either --manifests (standalone) or --kubeconfig (cluster), not both');
      }
      const k = kubeconfig();
      if (k) return (target = new KubeTarget(k));
      const dir = resolve(typeof values.manifests === 'string' ? values.manifests : join(ROOT, 'examples'));
      const secrets =
        typeof values['secrets-file'] === 'string'
          ? resolve(values['secrets-file'])
          : io.env.GPUGATE_RUN_DIR
            ? resolve(io.env.GPUGATE_RUN_DIR, 'secrets.yaml')
            : join(dirname(dir), '.run', 'secrets.yaml');
      return (target = new ManifestsTarget(dir, secrets));
    },
    hasDb: () => Boolean(databaseUrl),
    db: () => {
      if (!databaseUrl) {
        throw new CliError(
          `${command.path.join(' ')} reads the usage database: set DATABASE_URL or give --database-url postgres://...`,
        );
      }
      return (pool ??= openPool(databaseUrl));
    },
    note: (m) => {
      if (output === 'text') io.stderr(`${m}\n`);
    },
    env: io.env,
    color: io.tty === true && !io.env.NO_COLOR,
  };

  try {
    const result = await command.run(ctx, positionals, values);
    io.stdout(output === 'json' ? `${JSON.stringify(result.json, null, 2)}\n` : `${result.text}\n`);
    return EXIT.ok;
  } catch (err) {
    if (err instanceof CliError) return fail(err);
    const e = err as NodeJS.ErrnoException;
    const db = e.code === 'ECONNREFUSED' || e.code === '28P01' || e.code === '3D000' || e.code === '42P01';
    return fail(
      new CliError(
        db
          ? `the usage database failed: ${e.message}${e.code === '42P01' ? ' (run gpugate migrate)' : ''}`
          : `${command.path.join(' ')} failed: ${e.message}`,
      ),
    );
  } finally {
    await (target as Target | null)?.close();
    await (pool as pg.Pool | null)?.end();
  }
}
