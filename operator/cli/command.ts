// What every `gpugate` command shares: its declaration (name, usage, options), the context it runs
// in (output format, the lazily opened target and database), errors with exit codes, and the
// argument checks whose messages say which argument, which value and what is allowed.
import type { ParseArgsOptionsConfig } from 'node:util';
import pg from 'pg';
import { QUOTA_PERIODS } from '../api/v1alpha1/index.ts';
import type { Target } from './target.ts';

/** Exit codes: scripts can tell a typo from a missing object from a failing server. */
export const EXIT = { ok: 0, failure: 1, usage: 2, notFound: 3, conflict: 4 } as const;

export class CliError extends Error {
  readonly exitCode: number;
  readonly code: string;
  constructor(message: string, exitCode: number = EXIT.failure, code = 'error') {
    super(message);
    this.exitCode = exitCode;
    this.code = code;
  }
}

export const usageError = (message: string) => new CliError(message, EXIT.usage, 'usage');
export const notFound = (message: string) => new CliError(message, EXIT.notFound, 'not_found');
export const conflict = (message: string) => new CliError(message, EXIT.conflict, 'conflict');

export interface Output {
  /** Lines for a person. */
  text: string;
  /** The same facts for a script (--output json). */
  json: unknown;
}

export interface Context {
  output: 'text' | 'json';
  /** --namespace, else the kubeconfig context's namespace, else default. */
  namespace(): string;
  /** The CRs and Secrets: a cluster (kubeconfig) or a manifests folder (standalone). */
  target(): Promise<Target>;
  /** The usage database (DATABASE_URL / --database-url); throws a CliError naming both when unset. */
  db(): pg.Pool;
  /** True when a usage database is configured (commands add usage to their answer then). */
  hasDb(): boolean;
  /** Messages that are neither the answer nor an error (stderr). */
  note(message: string): void;
  /** The environment the CLI runs with (GPUGATE_* defaults of options). */
  env: NodeJS.ProcessEnv;
  /** Whether stdout is a terminal without NO_COLOR (tables are coloured then). */
  color: boolean;
}

export interface Command {
  /** Words after `gpugate`, e.g. ['quota', 'add']. */
  path: string[];
  summary: string;
  /** Positional arguments, e.g. ['<tenant>', '<credits>']. */
  args: string[];
  options?: ParseArgsOptionsConfig;
  /** Lines under "options:" in --help for the command's own options. */
  optionHelp?: string[];
  run(
    ctx: Context,
    positionals: string[],
    values: Record<string, string | boolean | undefined>,
  ): Promise<Output>;
}

const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

/** A Kubernetes object name (DNS-1123 subdomain), as the CRDs require. */
export function checkName(what: string, value: string): string {
  if (value.length > 253 || !NAME.test(value)) {
    throw usageError(
      `${what} ${JSON.stringify(value)} is not a valid name: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit (at most 253 characters)`,
    );
  }
  return value;
}

/** A credit amount: a finite decimal number, at least 0 (or above 0 when `positive`). */
export function parseCredits(what: string, raw: string, positive = false): number {
  const n = raw.trim() === '' ? NaN : Number(raw);
  const ok = Number.isFinite(n) && (positive ? n > 0 : n >= 0) && /^[0-9.eE+-]+$/.test(raw.trim());
  if (!ok) {
    throw usageError(
      `${what} must be a number ${positive ? 'greater than 0' : 'of at least 0'} (e.g. 100000 or 2.5), got ${JSON.stringify(raw)}`,
    );
  }
  return n;
}

export type Period = (typeof QUOTA_PERIODS)[number];

export function parsePeriod(raw: string): Period {
  const match = QUOTA_PERIODS.find((p) => p.toLowerCase() === raw.toLowerCase());
  if (!match) {
    throw usageError(`--period must be one of ${QUOTA_PERIODS.join(', ')}, got ${JSON.stringify(raw)}`);
  }
  return match;
}

/** "ns/name" from "name" (in the context namespace) or "ns/name". */
export function objectRef(ctx: Context, what: string, raw: string): { namespace: string; name: string } {
  const slash = raw.indexOf('/');
  if (slash < 0) return { namespace: ctx.namespace(), name: checkName(what, raw) };
  return {
    namespace: checkName(`${what} namespace`, raw.slice(0, slash)),
    name: checkName(what, raw.slice(slash + 1)),
  };
}

export function formatCredits(n: number | null | undefined): string {
  if (n === null || n === undefined) return '-';
  return Number.isInteger(n) ? String(n) : n.toFixed(4).replace(/0+$/, '').replace(/\.$/, '');
}

/** Two-column "label  value" lines. */
export function table(rows: [string, string][]): string {
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n');
}

export function openPool(url: string): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  // An idle connection the server drops would otherwise kill the CLI; the next statement reconnects.
  pool.on('error', () => undefined);
  return pool;
}
