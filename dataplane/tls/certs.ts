// TLS on the data plane's public port, for sidecar and no-ingress setups: a PEM certificate (chain)
// and key read from files, as a Kubernetes Secret volume mounts them (tls.crt, tls.key). The files are
// polled; when their content changes and the new pair forms a valid secure context, every listener
// gets it with setSecureContext (new connections use it, open ones keep theirs). A pair that does not
// load (half-written rotation, key that does not match) is refused and the old one kept. Messages name
// the files, never their content.
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext, type Server as TlsServer } from 'node:tls';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';

export interface TlsFiles {
  certFile: string;
  keyFile: string;
  /** How often the files are checked for a new pair; 0: never. Default 10 s. */
  reloadIntervalMs?: number;
}

export interface TlsPair {
  cert: Buffer;
  key: Buffer;
  /** SHA-256 of both files, to notice a change. */
  digest: string;
}

export class TlsConfigError extends Error {}

/** When the served (leaf) certificate stops being valid, in seconds since the epoch. */
function notAfterSeconds(cert: Buffer): number {
  return Math.floor(Date.parse(new X509Certificate(cert).validTo) / 1000);
}

export interface TlsMetrics {
  expiry: Gauge;
  reloads: Counter<'outcome'>;
}

/** The served certificate's expiry (for an alert before it lapses) and the reload outcomes. */
export function tlsMetrics(registry: Registry, initial: TlsPair): TlsMetrics {
  const expiry = new Gauge({
    name: 'gpugate_tls_certificate_expiry_timestamp_seconds',
    help: 'Not-after time of the certificate the public port serves (Unix seconds); alert on time() approaching it',
    registers: [registry],
  });
  expiry.set(notAfterSeconds(initial.cert));
  const reloads = new Counter({
    name: 'gpugate_tls_reloads_total',
    help: 'Changed certificate files seen: reloaded (now served) or refused (the previous pair kept)',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  reloads.labels('reloaded');
  reloads.labels('refused');
  return { expiry, reloads };
}

/** Reads and checks a certificate and key; throws a TlsConfigError naming the file and what is wrong. */
export function loadTlsPair(files: TlsFiles): TlsPair {
  const pair = readTlsPair(files);
  checkTlsPair(files, pair);
  return pair;
}

function readTlsPair(files: TlsFiles): TlsPair {
  const read = (what: string, file: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new TlsConfigError(
        `cannot read the TLS ${what} file ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`,
      );
    }
  };
  const cert = read('certificate', files.certFile);
  const key = read('key', files.keyFile);
  return { cert, key, digest: createHash('sha256').update(cert).update('\0').update(key).digest('hex') };
}

function checkTlsPair(files: TlsFiles, { cert, key }: TlsPair): void {
  if (!cert.includes('-----BEGIN CERTIFICATE-----'))
    throw new TlsConfigError(`the TLS certificate file ${files.certFile} holds no PEM certificate`);
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key.toString('latin1')))
    throw new TlsConfigError(`the TLS key file ${files.keyFile} holds no PEM private key`);
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    // OpenSSL's reason (e.g. "key values mismatch"), which never quotes the key.
    throw new TlsConfigError(
      `the TLS certificate ${files.certFile} and key ${files.keyFile} do not form a usable pair: ${(err as Error).message}`,
    );
  }
}

/**
 * Polls the files and swaps the servers' secure context when they change. Returns a stop function.
 * `onReload` is told of every outcome (tests and metrics).
 */
export function watchTlsPair(
  files: TlsFiles,
  initial: TlsPair,
  servers: () => TlsServer[],
  logger: Logger,
  onReload?: (outcome: 'reloaded' | 'refused') => void,
  metrics?: TlsMetrics,
): () => void {
  const interval = files.reloadIntervalMs ?? 10_000;
  if (interval <= 0) return () => undefined;
  let current = initial.digest;
  let refused: string | null = null;
  const timer = setInterval(() => {
    let next: TlsPair;
    try {
      next = readTlsPair(files);
      // Unchanged files (every poll but a rotation's) were checked when they were loaded.
      if (next.digest !== current) checkTlsPair(files, next);
    } catch (err) {
      // Say it once per distinct problem, not every interval.
      const message = (err as Error).message;
      if (message !== refused) {
        refused = message;
        logger.error({ problem: message }, 'new TLS certificate refused; serving the previous one');
        metrics?.reloads.labels('refused').inc();
        onReload?.('refused');
      }
      return;
    }
    refused = null;
    if (next.digest === current) return;
    for (const s of servers()) s.setSecureContext({ cert: next.cert, key: next.key });
    current = next.digest;
    metrics?.expiry.set(notAfterSeconds(next.cert));
    metrics?.reloads.labels('reloaded').inc();
    logger.info({ certFile: files.certFile }, 'TLS certificate reloaded');
    onReload?.('reloaded');
  }, interval);
  timer.unref();
  return () => clearInterval(timer);
}
