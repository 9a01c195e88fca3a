// Errors the gateway produces itself, all in one JSON shape. Upstream error bodies never pass
// through here: they are streamed back untouched.
import type { FastifyReply } from 'fastify';

export type ErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'not_found_error'
  | 'request_too_large'
  | 'rate_limit_error'
  | 'upstream_error'
  | 'overloaded_error'
  | 'timeout_error'
  | 'loop_detected'
  | 'internal_error';

export interface GatewayError {
  status: number;
  type: ErrorType;
  /** Stable machine-readable code, e.g. `unknown_model`, `key_expired`. */
  code: string;
  message: string;
  /** Extra response headers, e.g. Retry-After on 503. */
  headers?: Record<string, string>;
}

export function gatewayError(
  status: number,
  type: ErrorType,
  code: string,
  message: string,
  headers?: Record<string, string>,
): GatewayError {
  return headers ? { status, type, code, message, headers } : { status, type, code, message };
}

export function errorBody(err: GatewayError, requestId: string): string {
  return JSON.stringify({
    error: { type: err.type, code: err.code, message: err.message, request_id: requestId },
  });
}

/** The headers every answer the gateway itself gives on the public port carries. */
export function gatewayHeaders(requestId: string, version: string) {
  return { 'x-request-id': requestId, via: '1.1 gpugate', 'x-gpugate-version': version };
}

/** Answers a Fastify route's request with `err` in the gateway's error shape and headers. */
export function sendGatewayError(
  reply: FastifyReply,
  requestId: string,
  version: string,
  err: GatewayError,
): FastifyReply {
  return reply
    .code(err.status)
    .headers({ ...err.headers, 'content-type': 'application/json', ...gatewayHeaders(requestId, version) })
    .send(errorBody(err, requestId));
}
