// OpenTelemetry tracing of the request path, off by default. With an OTLP/HTTP endpoint configured,
// each proxied request gets a server span (`gpugate.request`) continuing the client's W3C
// traceparent/tracestate, with child spans for identify, routing, admission, every upstream attempt
// (a client span whose context is sent to the backend as traceparent) and metering, exported in
// batches. Without an endpoint nothing here is constructed: the request path holds a null and the
// client's traceparent/tracestate are forwarded untouched like any other header.
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
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
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

  constructor(opts: TracingOptions) {
    const exporter =
      opts.exporter ?? new OTLPTraceExporter({ url: opts.otlpEndpoint, headers: opts.headers });
    this.#provider = new TracerProvider({
      resource: resourceFromAttributes({
        'service.name': opts.serviceName ?? 'gpugate',
        ...(opts.version ? { 'service.version': opts.version } : {}),
        ...(opts.instanceId ? { 'service.instance.id': opts.instanceId } : {}),
      }),
      sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(opts.sampleRatio ?? 1) }),
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

  /** The server span of a request, continuing the client's traceparent when it sent a valid one. */
  start(headers: IncomingHttpHeaders, method: string, path: string, requestId: string): RequestTrace {
    const parent =
      headers.traceparent === undefined
        ? ROOT_CONTEXT
        : this.#propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
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
