// Upstream failures mapped once to the gateway's typed errors. `reached` says whether the request
// may have reached the backend: only requests that certainly did not are retried elsewhere.
import { gatewayError, type GatewayError } from '../errors.ts';

export type FailureKind =
  'connect' | 'connect_timeout' | 'first_byte_timeout' | 'total_timeout' | 'reset' | 'invalid';

export interface UpstreamFailure {
  kind: FailureKind;
  reached: boolean;
  /** Counts towards passive outlier ejection. */
  endpointFault: boolean;
  error: GatewayError;
}

/** Abort reasons the request path uses, compared by identity. */
export const TOTAL_TIMEOUT = new Error('total timeout');
export const CLIENT_ABORT = new Error('client closed the connection');

const NOT_REACHED = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'EADDRNOTAVAIL',
]);

export function classifyFailure(err: unknown, abortReason: unknown, backendId: string): UpstreamFailure {
  if (abortReason === TOTAL_TIMEOUT) {
    return {
      kind: 'total_timeout',
      reached: true,
      endpointFault: false,
      error: gatewayError(
        504,
        'timeout_error',
        'upstream_timeout',
        `backend ${backendId} did not finish within its total timeout`,
      ),
    };
  }
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && NOT_REACHED.has(code)) {
    return {
      kind: 'connect',
      reached: false,
      endpointFault: true,
      // 503, not 502: nothing reached a backend (no invalid answer was received), so the client may retry.
      error: gatewayError(
        503,
        'upstream_error',
        'upstream_unavailable',
        `could not connect to backend ${backendId} (${code})`,
      ),
    };
  }
  if (code === 'UND_ERR_CONNECT_TIMEOUT') {
    return {
      kind: 'connect_timeout',
      reached: false,
      endpointFault: true,
      error: gatewayError(
        503,
        'upstream_error',
        'upstream_connect_timeout',
        `connecting to backend ${backendId} timed out`,
      ),
    };
  }
  if (code === 'UND_ERR_INVALID_ARG') {
    // undici refused the request before sending it (e.g. a configured upstream credential with a
    // newline): a configuration problem, not the endpoint's.
    return {
      kind: 'invalid',
      reached: false,
      endpointFault: false,
      error: gatewayError(
        502,
        'upstream_error',
        'upstream_request_invalid',
        `the request to backend ${backendId} could not be sent: ${(err as Error).message}`,
      ),
    };
  }
  if (typeof code === 'string' && (code.startsWith('ERR_INVALID_') || code.startsWith('ERR_HTTP_'))) {
    return {
      kind: 'invalid',
      reached: true,
      endpointFault: false,
      error: gatewayError(
        502,
        'upstream_error',
        'bad_upstream_response',
        `backend ${backendId} sent response headers that cannot be relayed`,
      ),
    };
  }
  if (code === 'UND_ERR_HEADERS_TIMEOUT') {
    return {
      kind: 'first_byte_timeout',
      reached: true,
      endpointFault: true,
      error: gatewayError(
        504,
        'timeout_error',
        'upstream_first_byte_timeout',
        `backend ${backendId} sent no response headers within its first-byte timeout`,
      ),
    };
  }
  return {
    kind: 'reset',
    reached: true,
    endpointFault: true,
    error: gatewayError(
      502,
      'upstream_error',
      'upstream_reset',
      `backend ${backendId} closed the connection before answering`,
    ),
  };
}
