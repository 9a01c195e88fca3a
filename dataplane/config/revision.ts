// A snapshot's revision is the SHA-256 of its canonical JSON (keys sorted, no whitespace), so the
// same content always gets the same revision whichever process compiled it.
import { createHash } from 'node:crypto';

export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** The revision of a snapshot body: everything except `revision` and `generatedAt`. */
export function contentRevision(body: object): string {
  const { revision: _r, generatedAt: _g, ...content } = body as Record<string, unknown>;
  return sha256Hex(canonicalJson(content));
}
