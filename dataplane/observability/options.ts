// The access log's and tracing's process settings (dataplane/main.ts): flags override environment
// variables, and a bad value is refused naming the flag, the value and what is allowed.
//   --access-log / GPUGATE_ACCESS_LOG                on | off (on)
//   --access-log-level / GPUGATE_ACCESS_LOG_LEVEL    trace | debug | info | warn | error | fatal (info)
//   --access-log-sample / GPUGATE_ACCESS_LOG_SAMPLE  share of status < 400 lines kept, 0..1 (1)
//   --otlp-endpoint / GPUGATE_OTLP_ENDPOINT          OTLP/HTTP traces URL; tracing is on when set (off)
//   --trace-sample / GPUGATE_TRACE_SAMPLE            share of new root traces sampled, 0..1 (1)
//   GPUGATE_OTLP_HEADERS                             name=value,... sent to the collector (its auth: env
//                                                    only, so it never shows in a process listing)
import type { Level } from 'pino';
import type { AccessLogOptions } from './access-log.ts';
import type { TracingOptions } from './tracing.ts';

export class ObservabilityConfigError extends Error {}

const LEVELS: readonly Level[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];

export interface ObservabilityValues {
  'access-log'?: string;
  'access-log-level'?: string;
  'access-log-sample'?: string;
  'otlp-endpoint'?: string;
  'trace-sample'?: string;
}

export const OBSERVABILITY_FLAGS = {
  'access-log': { type: 'string' },
  'access-log-level': { type: 'string' },
  'access-log-sample': { type: 'string' },
  'otlp-endpoint': { type: 'string' },
  'trace-sample': { type: 'string' },
} as const;

/** A process setting's source and raw value: the flag if given, else a non-empty environment variable. */
export function flagOrEnv(
  flag: string,
  value: string | undefined,
  env: string | undefined,
): [source: string, raw: string] | null {
  if (value !== undefined) return [`--${flag}`, value];
  if (env !== undefined && env !== '') return [envName(flag), env];
  return null;
}

export const envName = (flag: string) =>
  flag === 'otlp-endpoint' ? 'GPUGATE_OTLP_ENDPOINT' : `GPUGATE_${flag.toUpperCase().replaceAll('-', '_')}`;

function ratio(flag: string, values: ObservabilityValues, env: NodeJS.ProcessEnv): number | undefined {
  const got = flagOrEnv(flag, values[flag as keyof ObservabilityValues], env[envName(flag)]);
  if (!got) return undefined;
  const n = got[1].trim() === '' ? NaN : Number(got[1]);
  if (!Number.isFinite(n) || n < 0 || n > 1)
    throw new ObservabilityConfigError(
      `${got[0]} must be a number from 0 to 1 (e.g. 0.1 keeps one in ten), got ${JSON.stringify(got[1])}`,
    );
  return n;
}

export function observabilityOptions(
  values: ObservabilityValues,
  env: NodeJS.ProcessEnv,
): { accessLog: Partial<AccessLogOptions>; tracing: TracingOptions | null } {
  const accessLog: Partial<AccessLogOptions> = {};
  const onOff = flagOrEnv('access-log', values['access-log'], env.GPUGATE_ACCESS_LOG);
  if (onOff) {
    if (onOff[1] !== 'on' && onOff[1] !== 'off')
      throw new ObservabilityConfigError(`${onOff[0]} must be on or off, got ${JSON.stringify(onOff[1])}`);
    accessLog.enabled = onOff[1] === 'on';
  }
  const level = flagOrEnv('access-log-level', values['access-log-level'], env.GPUGATE_ACCESS_LOG_LEVEL);
  if (level) {
    if (!LEVELS.includes(level[1] as Level))
      throw new ObservabilityConfigError(
        `${level[0]} must be one of ${LEVELS.join(', ')}, got ${JSON.stringify(level[1])}`,
      );
    accessLog.level = level[1] as Level;
  }
  const sample = ratio('access-log-sample', values, env);
  if (sample !== undefined) accessLog.sampleRate = sample;

  const endpoint = flagOrEnv('otlp-endpoint', values['otlp-endpoint'], env.GPUGATE_OTLP_ENDPOINT);
  const traceSample = ratio('trace-sample', values, env);
  if (!endpoint) {
    if (traceSample !== undefined)
      throw new ObservabilityConfigError(
        '--trace-sample (GPUGATE_TRACE_SAMPLE) needs --otlp-endpoint (GPUGATE_OTLP_ENDPOINT): tracing is off without a collector',
      );
    return { accessLog, tracing: null };
  }
  if (!URL.canParse(endpoint[1]) || !['http:', 'https:'].includes(new URL(endpoint[1]).protocol))
    throw new ObservabilityConfigError(
      `${endpoint[0]} must be an http(s) URL such as http://otel-collector:4318/v1/traces, got ${JSON.stringify(endpoint[1])}`,
    );
  const headers: Record<string, string> = {};
  for (const part of (env.GPUGATE_OTLP_HEADERS ?? '').split(',')) {
    if (part.trim() === '') continue;
    const i = part.indexOf('=');
    const name = i < 0 ? '' : part.slice(0, i).trim();
    // The value may be a credential: the error names the header, never its value.
    if (!/^[A-Za-z0-9-]+$/.test(name))
      throw new ObservabilityConfigError(
        `GPUGATE_OTLP_HEADERS must be name=value pairs separated by commas; one entry has ${i < 0 ? 'no "="' : `the header name ${JSON.stringify(name)}`}`,
      );
    headers[name] = part.slice(i + 1).trim();
  }
  return {
    accessLog,
    tracing: {
      otlpEndpoint: endpoint[1],
      ...(Object.keys(headers).length > 0 ? { headers } : {}),
      ...(traceSample !== undefined ? { sampleRatio: traceSample } : {}),
    },
  };
}
