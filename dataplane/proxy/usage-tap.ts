// Watches response bytes on their way to the client (without holding the stream back) to count
// them and to read the OpenAI `usage` object: from a JSON body, or from the last SSE event that
// carries one (the final chunk with stream_options.include_usage).

import { StringDecoder } from 'node:string_decoder';

export interface TokenUsage {
  inputTokens: number;
  outputTokens: number;
}

const MAX_JSON_BYTES = 1 << 20;
const SSE_TAIL_BYTES = 16 << 10;
/** Where an SSE event carrying a JSON object (a chunk) starts: this, then `{` or ` {`. */
const DATA_FIELD = Buffer.from('\ndata:');
/** The longest event start (`\ndata: {`) less one byte: what a start split across chunks can leave in the earlier one. */
const CARRY_BYTES = DATA_FIELD.length + 1;
/** Shared by every tap (only ever replaced, never written): no buffer per request. */
const STREAM_START = Buffer.from('\n');

/** Length of the event start (`\ndata:{` or `\ndata: {`) at `at` of `b`, 0 when there is none. */
function eventStartAt(b: Buffer, at: number): number {
  const i = at + DATA_FIELD.length;
  if (b[i] === 0x7b) return DATA_FIELD.length + 1;
  if (b[i] === 0x20 && b[i + 1] === 0x7b) return DATA_FIELD.length + 2;
  return 0;
}

/** Byte `at` of `prev` followed by `chunk`, -1 past the end of both. */
function seamByte(prev: Buffer, chunk: Buffer, at: number): number {
  if (at < prev.length) return prev[at] as number;
  const c = chunk[at - prev.length];
  return c === undefined ? -1 : c;
}

/**
 * Event starts that begin in the stream's last bytes before `chunk` (the last CARRY_BYTES of `prev`)
 * and end in `chunk`; those wholly in either are counted elsewhere. Reads across the boundary byte by
 * byte instead of copying the two into one buffer: with one event per chunk, every start is here.
 */
function eventStartsAcross(prev: Buffer, chunk: Buffer): number {
  let n = 0;
  for (let at = Math.max(0, prev.length - CARRY_BYTES); at < prev.length; at++) {
    let j = 0;
    while (j < DATA_FIELD.length && seamByte(prev, chunk, at + j) === DATA_FIELD[j]) j++;
    if (j < DATA_FIELD.length) continue;
    const next = seamByte(prev, chunk, at + j);
    const length =
      next === 0x7b ? j + 1 : next === 0x20 && seamByte(prev, chunk, at + j + 1) === 0x7b ? j + 2 : 0;
    if (length > 0 && at + length > prev.length) n++;
  }
  return n;
}

export class UsageTap {
  bytes = 0;
  readonly #mode: 'json' | 'sse' | 'none';
  #chunks: Buffer[] = [];
  #held = 0;
  #overflow = false;
  /** SSE: `data: {` events seen so far (whole stream, not just the tail). */
  #events = 0;
  /**
   * SSE: its last CARRY_BYTES are the stream's last bytes so far, for an event start split across
   * chunks ('\n': stream start).
   */
  #tail: Buffer = STREAM_START;

  constructor(contentType: string | undefined, readUsage: boolean) {
    if (!readUsage || !contentType) this.#mode = 'none';
    else if (contentType.includes('text/event-stream')) this.#mode = 'sse';
    else if (contentType.includes('json')) this.#mode = 'json';
    else this.#mode = 'none';
  }

  /** Every response chunk on its way to the client. */
  onData(chunk: Buffer): void {
    this.bytes += chunk.length;
    if (this.#mode === 'none') return;
    if (this.#mode === 'json') {
      if (this.#overflow) return;
      this.#held += chunk.length;
      if (this.#held > MAX_JSON_BYTES) {
        this.#overflow = true;
        this.#chunks = [];
        return;
      }
      this.#chunks.push(chunk);
      return;
    }
    this.#countEvents(chunk);
    // SSE: keep only a tail long enough for the final usage event.
    this.#chunks.push(chunk);
    this.#held += chunk.length;
    while (this.#held - (this.#chunks[0]?.length ?? 0) >= SSE_TAIL_BYTES && this.#chunks.length > 1) {
      this.#held -= (this.#chunks.shift() as Buffer).length;
    }
  }

  /**
   * SSE: the number of `data: {...}` events (chunks) that passed, for an output-token estimate when the
   * backend reported no usage (a cut stream): OpenAI-style servers send one chunk per generated token.
   * Null for other responses.
   */
  get sseChunks(): number | null {
    return this.#mode === 'sse' ? this.#events : null;
  }

  #countEvents(chunk: Buffer): void {
    // Starts that began in the previous chunk's last bytes, then those wholly in this chunk (a start
    // running past its end is counted with the next chunk).
    this.#events += eventStartsAcross(this.#tail, chunk);
    let at = chunk.indexOf(DATA_FIELD);
    while (at >= 0) {
      if (eventStartAt(chunk, at) > 0) this.#events++;
      at = chunk.indexOf(DATA_FIELD, at + 1);
    }
    // What ends the stream so far, for the next chunk: this chunk when it is long enough (no copy),
    // else the previous tail's last bytes and this chunk.
    this.#tail =
      chunk.length >= CARRY_BYTES
        ? chunk
        : Buffer.concat([this.#tail.subarray(Math.max(0, this.#tail.length - CARRY_BYTES)), chunk]);
  }

  /** The usage the backend reported, or null when it reported none (the caller estimates then). */
  usage(): TokenUsage | null {
    if (this.#mode === 'none' || this.#overflow || this.#chunks.length === 0) return null;
    if (this.#mode === 'sse') return this.#sseUsage();
    const chunks = this.#chunks;
    const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
    const trailing = trailingUsage(body);
    if (trailing !== undefined) return trailing;
    try {
      return usageOf(JSON.parse(body.toString('utf8')));
    } catch {
      return null;
    }
  }

  /**
   * The final usage event is nearly always in the last chunk or the one before (then `data: [DONE]`
   * may follow): those are decoded first, alone, rather than the whole 16 KiB tail. What they give is
   * the whole tail's answer when the event found there starts after a line break within them (its
   * line is whole, and every line after it was read whole too); else the whole tail decides.
   */
  #sseUsage(): TokenUsage | null {
    const chunks = this.#chunks;
    const n = chunks.length;
    for (let k = 1; k <= Math.min(2, n - 1); k++) {
      const last = chunks[n - 1] as Buffer;
      const text = (k === 1 ? last : Buffer.concat([chunks[n - 2] as Buffer, last])).toString('utf8');
      const found = lastUsageEvent(text);
      if (found === null) continue;
      const before = chunks[n - k - 1] as Buffer;
      if (found.lineStart > 0 || before[before.length - 1] === 0x0a) return found.usage;
    }
    return sseUsage((n === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks)).toString('utf8'));
  }
}

const USAGE_KEY = Buffer.from('"usage"');

function isJsonSpace(c: number | undefined): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

function skipSpace(b: Buffer, i: number): number {
  while (i < b.length && isJsonSpace(b[i])) i++;
  return i;
}

/** The index just past the JSON object starting at `start` ('{'), or -1 when it does not close. */
function objectEnd(b: Buffer, start: number): number {
  let depth = 0;
  let inString = false;
  for (let i = start; i < b.length; i++) {
    const c = b[i] as number;
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped byte
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) depth++;
    else if (c === 0x7d || c === 0x5d) {
      if (--depth === 0) return i + 1;
    }
  }
  return -1;
}

/**
 * The top-level usage of a JSON response body without parsing the whole body (which grows with the
 * generated text): the last `"usage"` key, its object, and what follows it are parsed, and only when
 * what follows closes the outermost object (`}`, or `, members }`) is that key top-level. Undefined
 * when this cannot tell (no such key, a nested or odd one, anything malformed): the caller parses the
 * whole body. For a well-formed body the answer is the whole parse's; a body malformed before its
 * well-formed trailing usage gets that usage rather than none.
 */
export function trailingUsage(b: Buffer): TokenUsage | null | undefined {
  const key = b.lastIndexOf(USAGE_KEY);
  if (key < 1) return undefined;
  // A key starts after '{' or ','; anything else (e.g. `\"usage"` ending another key) is not this key.
  let before = key - 1;
  while (before > 0 && isJsonSpace(b[before])) before--;
  if (b[before] !== 0x7b && b[before] !== 0x2c) return undefined;
  let i = skipSpace(b, key + USAGE_KEY.length);
  if (b[i] !== 0x3a) return undefined; // ':'
  i = skipSpace(b, i + 1);
  if (b[i] !== 0x7b) return undefined; // '{' (null or another type: the whole parse decides)
  const end = objectEnd(b, i);
  if (end < 0) return undefined;
  const after = skipSpace(b, end);
  if (b[after] === 0x7d) {
    if (skipSpace(b, after + 1) !== b.length) return undefined;
  } else if (b[after] === 0x2c) {
    try {
      const rest: unknown = JSON.parse(`{${b.toString('utf8', after + 1)}`);
      if (rest === null || typeof rest !== 'object' || 'usage' in rest) return undefined;
    } catch {
      return undefined;
    }
  } else return undefined;
  try {
    return usageOf({ usage: JSON.parse(b.toString('utf8', i, end)) as unknown });
  } catch {
    return undefined;
  }
}

function usageOf(value: unknown): TokenUsage | null {
  if (value === null || typeof value !== 'object') return null;
  const usage = (value as { usage?: unknown }).usage;
  if (usage === null || typeof usage !== 'object') return null;
  const u = usage as { prompt_tokens?: unknown; completion_tokens?: unknown };
  if (typeof u.prompt_tokens !== 'number' && typeof u.completion_tokens !== 'number') return null;
  return {
    inputTokens: typeof u.prompt_tokens === 'number' ? u.prompt_tokens : 0,
    outputTokens: typeof u.completion_tokens === 'number' ? u.completion_tokens : 0,
  };
}

/** The usage of the last `data:` event that has a non-null one. */
export function sseUsage(text: string): TokenUsage | null {
  return lastUsageEvent(text)?.usage ?? null;
}

/** sseUsage, with where that event's line starts in `text`. */
function lastUsageEvent(text: string): { usage: TokenUsage; lineStart: number } | null {
  let end = text.length;
  for (;;) {
    const at = text.lastIndexOf('"usage"', end);
    if (at < 0) return null;
    const lineStart = text.lastIndexOf('\n', at) + 1;
    const lineEndRaw = text.indexOf('\n', at);
    const line = text.slice(lineStart, lineEndRaw < 0 ? undefined : lineEndRaw).trim();
    if (line.startsWith('data:')) {
      try {
        const usage = usageOf(JSON.parse(line.slice(5).trim()));
        if (usage) return { usage, lineStart };
      } catch {
        // a cut or foreign line: look further back
      }
    }
    end = lineStart - 1;
    if (end < 0) return null;
  }
}

/**
 * A small JSON request body as the gateway read it: parsed once by the proxy, then used for the
 * model, the admission's max_tokens estimate and the stream-usage rewrite. Null when the body is
 * not a JSON object.
 */
export function parseJsonRequest(body: Buffer): Readonly<Record<string, unknown>> | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return null;
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return null;
  return parsed as Record<string, unknown>;
}

/** Inserted as the first member of a streaming request that has no stream_options at all. */
const USAGE_OPTION = Buffer.from('"stream_options":{"include_usage":true},');

/**
 * For an OpenAI streaming request (parsed with parseJsonRequest from `raw`) that did not ask for
 * usage, the body with `stream_options.include_usage: true`, so the backend reports exact token
 * counts in a final chunk (which UsageChunkFilter then keeps from the client). Null when nothing
 * needs changing.
 *
 * Without stream_options (the usual case) the member is spliced into the client's bytes after the
 * opening brace: the rest of the body reaches the backend byte for byte (a 64-bit seed keeps its
 * digits, 1.0 stays 1.0), and a long prompt is copied once instead of serialized again, which is
 * time every streamed request waits before the backend sees it (docs/benchmarks.md, streaming).
 */
export function askForStreamUsage(request: Readonly<Record<string, unknown>>, raw: Buffer): Buffer | null {
  if (request.stream !== true) return null;
  const options = request.stream_options;
  if (options === undefined) {
    // parseJsonRequest accepted an object, so the first byte that is not JSON whitespace is its
    // brace, and the object has a member (stream) for the inserted one's comma to precede.
    const brace = raw.indexOf(0x7b);
    return Buffer.concat([raw.subarray(0, brace + 1), USAGE_OPTION, raw.subarray(brace + 1)]);
  }
  if (options === null || typeof options !== 'object' || Array.isArray(options)) return null;
  if ((options as { include_usage?: unknown }).include_usage !== undefined) return null;
  // Other stream options to keep: rare enough to serialize (a copy: the parsed request stays as sent).
  return Buffer.from(
    JSON.stringify({ ...request, stream_options: { ...(options as object), include_usage: true } }),
  );
}

const MAX_PENDING_EVENT = 1 << 20;

/**
 * Removes what asking for usage added to an SSE stream whose client did not ask for it: the
 * usage-only final chunk (`"choices": []` with a usage object), and the `"usage":null` member the
 * backend then puts in every other chunk (OpenAI and vLLM do), so the client sees the stream a direct
 * call would have given it. Complete events pass at once; only an event split across chunks waits
 * for its end, which a client could not have used earlier anyway.
 */
export class UsageChunkFilter {
  /** Made for the first chunk that is decoded (most token chunks never are). */
  #decoder: StringDecoder | null = null;
  #pending = '';
  /** Nothing held back: the last chunk ended with its last event (so the decoder holds no bytes either). */
  #clean = true;

  /**
   * What to pass to the client now. A chunk of whole events none of which can be usage-only (no
   * empty JSON array in it) is not decoded and re-encoded: most token chunks, returned as they came
   * but for their `"usage":null` members.
   */
  push(chunk: Buffer): Buffer | string {
    const whole = endsWithBlankLine(chunk);
    if (this.#clean && whole && !hasEmptyArray(chunk)) return withoutNullUsage(chunk);
    const out = this.#filter(chunk);
    this.#clean = whole && this.#pending === '';
    return out;
  }

  #filter(chunk: Buffer): string {
    const text = this.#pending + (this.#decoder ??= new StringDecoder('utf8')).write(chunk);
    let out = '';
    let start = 0;
    for (;;) {
      const end = text.indexOf('\n\n', start);
      if (end < 0) break;
      const event = text.slice(start, end + 2);
      if (!isUsageOnlyEvent(event)) out += dropNullUsage(event);
      start = end + 2;
    }
    this.#pending = text.slice(start);
    if (this.#pending.length > MAX_PENDING_EVENT) {
      // Not SSE as we know it: stop filtering rather than hold bytes back.
      out += this.#pending;
      this.#pending = '';
    }
    return out;
  }

  flush(): string {
    const rest = this.#pending + (this.#decoder?.end() ?? '');
    this.#pending = '';
    return rest;
  }
}

/**
 * The member as backends write it: compact (vLLM, most servers) or with Python's default separators.
 * Unescaped, `,"usage"` cannot occur inside a JSON string (its quote would be `\"` there), so a match
 * is always a member, and removing it with its leading comma leaves valid JSON. A `"usage":null` that
 * is an object's first member is left as it is (no backend seen writes it first).
 */
const NULL_USAGE = [',"usage":null', ', "usage": null'];
const NULL_USAGE_BYTES = NULL_USAGE.map((m) => Buffer.from(m));

function withoutNullUsage(chunk: Buffer): Buffer {
  let out = chunk;
  for (const member of NULL_USAGE_BYTES) {
    let at = out.indexOf(member);
    if (at < 0) continue;
    const parts: Buffer[] = [];
    let from = 0;
    while (at >= 0) {
      parts.push(out.subarray(from, at));
      from = at + member.length;
      at = out.indexOf(member, from);
    }
    parts.push(out.subarray(from));
    out = Buffer.concat(parts);
  }
  return out;
}

function dropNullUsage(event: string): string {
  let out = event;
  for (const member of NULL_USAGE) out = out.replaceAll(member, '');
  return out;
}

function endsWithBlankLine(chunk: Buffer): boolean {
  const n = chunk.length;
  return n >= 2 && chunk[n - 1] === 0x0a && chunk[n - 2] === 0x0a;
}

/** `[` then optional JSON whitespace then `]` anywhere: the only way a usage-only event's empty choices can look. */
function hasEmptyArray(chunk: Buffer): boolean {
  let at = chunk.indexOf(0x5b);
  while (at >= 0) {
    if (chunk[skipSpace(chunk, at + 1)] === 0x5d) return true;
    at = chunk.indexOf(0x5b, at + 1);
  }
  return false;
}

/** `event` ends with its blank line ("\n\n"). */
function isUsageOnlyEvent(event: string): boolean {
  if (!event.includes('"usage"') || !event.includes('"choices"')) return false;
  // One `data:` line (what backends send) is its own data; else the data lines are joined.
  const newline = event.indexOf('\n');
  const data =
    newline === event.length - 2 && event.startsWith('data:')
      ? event.slice(5, newline).trim()
      : event
          .split('\n')
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).trim())
          .join('\n');
  try {
    const chunk = JSON.parse(data) as { choices?: unknown; usage?: unknown };
    return (
      Array.isArray(chunk.choices) &&
      chunk.choices.length === 0 &&
      chunk.usage !== null &&
      typeof chunk.usage === 'object'
    );
  } catch {
    return false;
  }
}
