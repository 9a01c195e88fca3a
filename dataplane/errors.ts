// Errors the gateway produces itself, all in one JSON shape. Upstream error bodies never pass
// through here: they are streamed back untouched.

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
