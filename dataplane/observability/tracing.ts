// OpenTelemetry tracing of the request path, off by default. With an OTLP/HTTP endpoint configured,
// each proxied request gets a server span (`gpugate.request`) continuing the client's W3C
// traceparent/tracestate, with child spans for identify, routing, admission, every upstream attempt
// (a client span whose context is sent to the backend as traceparent) and metering, exported in
// batches. Without an endpoint nothing here is constructed: the request path holds a null and the
// client's traceparent/tracestate are forwarded untouched like any other header.
//
// The sampling decision comes first and costs no span: a request whose client sent a traceparent follows
// its sampled flag, any other is sampled with probability sampleRatio. An unsampled request gets no
// RequestTrace at all (start() answers null) and is handled like tracing off, its traceparent forwarded
// as it came: with --trace-sample 0.01 the other 99 % pay a random number and a regex, not six
// non-recording spans (test/bench/tracing.ts measured those at 7-24 µs per request).
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  defaultTextMapGetter,
  defaultTextMapSetter,
  trace,
  type Attributes,
  type Context,
  type Span,
  type Tracer,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOnSampler,
  BatchSpanProcessor,
  TracerProvider,
  type SpanExporter,
} from '@opentelemetry/sdk-trace';
import type { IncomingHttpHeaders } from 'node:http';

export interface TracingOptions {
  /** OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces. */
  otlpEndpoint: string;
  /** Extra headers for the exporter (a collector's auth). */
  headers?: Record<string, string>;
  serviceName?: string;
  /** Ratio of new root traces sampled; a client's sampled flag is followed. Default 1. */
  sampleRatio?: number;
  /** Batch delay; default 1000 ms. */
  exportDelayMs?: number;
  instanceId?: string;
  version?: string;
  /** Replaces the OTLP exporter (benchmarks measure the SDK without a collector). */
  exporter?: SpanExporter;
  /** The sampling coin for new root traces, [0, 1); Math.random by default (tests fix it). */
  random?: () => number;
}

export type Phase = 'identify' | 'routing' | 'admission' | 'metering';

/** The spans of one request. */
export class RequestTrace {
  readonly #tracer: Tracer;
  readonly #propagator: W3CTraceContextPropagator;
  readonly root: Span;
  readonly #ctx: Context;
  #upstream: Span | null = null;

  constructor(tracer: Tracer, propagator: W3CTraceContextPropagator, root: Span, ctx: Context) {
    this.#tracer = tracer;
    this.#propagator = propagator;
    this.root = root;
    this.#ctx = ctx;
  }

  get traceId(): string {
    return this.root.spanContext().traceId;
  }

  /** A child span for one phase of the request; end it with end(). */
  phase(name: Phase, attributes?: Attributes): Span {
    return this.#tracer.startSpan(`gpugate.${name}`, { attributes }, this.#ctx);
  }

  /**
   * A client span for one upstream attempt (ending the previous attempt's, if open), written into
   * the headers sent to the backend as traceparent/tracestate.
   */
  upstream(headers: Record<string, string>, attributes: Attributes): void {
    this.endUpstream();
    const span = this.#tracer.startSpan('gpugate.upstream', { kind: SpanKind.CLIENT, attributes }, this.#ctx);
    this.#upstream = span;
    delete headers.traceparent;
    delete headers.tracestate;
    this.#propagator.inject(trace.setSpan(this.#ctx, span), headers, defaultTextMapSetter);
  }

  endUpstream(status?: number, error?: string): void {
    const span = this.#upstream;
    if (!span) return;
    this.#upstream = null;
    if (status !== undefined) span.setAttribute('http.response.status_code', status);
    if (error !== undefined || (status !== undefined && status >= 500))
      span.setStatus({ code: SpanStatusCode.ERROR, message: error });
    span.end();
  }

  end(status: number, attributes: Attributes): void {
    this.endUpstream();
    this.root.setAttributes(attributes);
    this.root.setAttribute('http.response.status_code', status);
    if (status >= 500) this.root.setStatus({ code: SpanStatusCode.ERROR });
    this.root.end();
  }
}

export class Tracing {
  readonly #provider: TracerProvider;
  readonly #tracer: Tracer;
  readonly #propagator = new W3CTraceContextPropagator();
  readonly #ratio: number;
  readonly #random: () => number;

  constructor(opts: TracingOptions) {
    this.#ratio = Math.min(1, Math.max(0, opts.sampleRatio ?? 1));
    this.#random = opts.random ?? Math.random;
    const exporter =
      opts.exporter ?? new OTLPTraceExporter({ url: opts.otlpEndpoint, headers: opts.headers });
    this.#provider = new TracerProvider({
      resource: resourceFromAttributes({
        'service.name': opts.serviceName ?? 'gpugate',
        ...(opts.version ? { 'service.version': opts.version } : {}),
        ...(opts.instanceId ? { 'service.instance.id': opts.instanceId } : {}),
      }),
      // start() has decided already: every span it starts is one to record.
      sampler: new AlwaysOnSampler(),
      spanProcessors: [
        new BatchSpanProcessor({
          exporter,
          scheduledDelayMillis: opts.exportDelayMs ?? 1000,
          maxQueueSize: 8192,
          maxExportBatchSize: 512,
        }),
      ],
    });
    this.#tracer = this.#provider.getTracer('gpugate', opts.version);
  }

  /**
   * The server span of a sampled request, continuing the client's traceparent when it sent a valid one;
   * null when the request is not sampled (the client said so, or the ratio's coin did).
   */
  start(headers: IncomingHttpHeaders, method: string, path: string, requestId: string): RequestTrace | null {
    const client = sampledFlag(headers.traceparent);
    if (client === false) return null;
    if (client === null && !(this.#ratio >= 1 || this.#random() < this.#ratio)) return null;
    const parent =
      client === null ? ROOT_CONTEXT : this.#propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
    const root = this.#tracer.startSpan(
      'gpugate.request',
      {
        kind: SpanKind.SERVER,
        attributes: { 'http.request.method': method, 'url.path': path, 'gpugate.request_id': requestId },
      },
      parent,
    );
    return new RequestTrace(this.#tracer, this.#propagator, root, trace.setSpan(parent, root));
  }

  /** Exports what is buffered. */
  flush(): Promise<void> {
    return this.#provider.forceFlush();
  }

  shutdown(): Promise<void> {
    return this.#provider.shutdown();
  }
}

const TRACEPARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-|$)/;

/**
 * The sampled flag of a client's W3C traceparent: true or false, or null when there is none or it is not
 * valid (all-zero ids included), in which case the request starts a new trace.
 */
export function sampledFlag(traceparent: string | string[] | undefined): boolean | null {
  if (typeof traceparent !== 'string') return null;
  const m = TRACEPARENT.exec(traceparent);
  if (!m || /^0+$/.test(m[1]!) || /^0+$/.test(m[2]!) || traceparent.startsWith('ff')) return null;
  return (parseInt(m[3]!, 16) & 1) === 1;
}
