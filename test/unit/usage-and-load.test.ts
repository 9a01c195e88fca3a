import { describe, expect, it } from 'vitest';
import {
  askForStreamUsage,
  parseJsonRequest,
  sseUsage,
  trailingUsage,
  UsageChunkFilter,
  UsageTap,
} from '../../dataplane/proxy/usage-tap.ts';
import { parseServerLoad, recordOutcome } from '../../dataplane/upstream/health.ts';
import type { EndpointState } from '../../dataplane/upstream/endpoint.ts';

describe('usage from responses', () => {
  it('reads the usage of the last SSE event that carries one', () => {
    const text =
      'data: {"choices":[{"delta":{"content":"usage"}}],"usage":null}\n\n' +
      'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34}}\n\ndata: [DONE]\n\n';
    expect(sseUsage(text)).toEqual({ inputTokens: 12, outputTokens: 34 });
    expect(sseUsage('data: {"choices":[]}\n\ndata: [DONE]\n\n')).toBeNull();
  });

  it('reads a JSON body usage split over chunks and counts bytes', () => {
    const tap = new UsageTap('application/json', true);
    const body = Buffer.from('{"usage":{"prompt_tokens":5,"completion_tokens":6}}');
    tap.onData(body.subarray(0, 10));
    tap.onData(body.subarray(10));
    expect(tap.usage()).toEqual({ inputTokens: 5, outputTokens: 6 });
    expect(tap.bytes).toBe(body.length);
  });

  it('keeps only a bounded tail of a long SSE stream and still finds the final usage', () => {
    const tap = new UsageTap('text/event-stream', true);
    for (let i = 0; i < 5000; i++)
      tap.onData(Buffer.from(`data: {"choices":[{"delta":{"content":"token ${i}"}}]}\n\n`));
    tap.onData(
      Buffer.from(
        'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":5000}}\n\ndata: [DONE]\n\n',
      ),
    );
    expect(tap.usage()).toEqual({ inputTokens: 1, outputTokens: 5000 });
  });

  it('counts the data chunks of a stream, across chunk boundaries, for a cut stream without usage', () => {
    const tap = new UsageTap('text/event-stream', true);
    const stream = Buffer.from(
      Array.from({ length: 40 }, (_, i) => `data: {"choices":[{"delta":{"content":"t${i}"}}]}\n\n`).join('') +
        'data:{"choices":[{"delta":{"content":"no space"}}]}\r\n\r\n: comment data: {\n\ndata: [DONE]\n\n',
    );
    // Every split point, in 7-byte pieces (shorter than the pattern) and one byte at a time.
    for (let i = 0; i < stream.length; i += 7) tap.onData(stream.subarray(i, i + 7));
    expect(tap.sseChunks).toBe(41);
    const bytewise = new UsageTap('text/event-stream', true);
    for (let i = 0; i < stream.length; i++) bytewise.onData(stream.subarray(i, i + 1));
    expect(bytewise.sseChunks).toBe(41);
    expect(bytewise.usage()).toBeNull();
    expect(new UsageTap('application/json', true).sseChunks).toBeNull();
  });
});

/** A deterministic integer in [0, n) per call, from `seed` (a linear congruential generator): same cases every run. */
function seededRand(seed: number): (n: number) => number {
  return (n) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
}

describe('an SSE stream read chunk by chunk agrees with the whole stream read at once', () => {
  // The tap counts events and finds the final usage without joining the stream's chunks; whatever
  // the chunking, it must say what the whole text says.
  const rand = seededRand(7);
  const events = [
    'data: {"choices":[{"delta":{"content":"tök"}}],"usage":null}\n\n',
    'data:{"choices":[{"delta":{"content":"no space"}}]}\r\n\r\n',
    'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}\n\n',
    'data: {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}\n\n',
    'data: {"choices":[{"delta":{"content":"{\\"usage\\":{\\"prompt_tokens\\":5}}"}}]}\n\n',
    'xdata: {"usage":{"prompt_tokens":8,"completion_tokens":8}}\n\n',
    ': comment data: {"usage":{"prompt_tokens":6,"completion_tokens":6}}\n\n',
    'event: usage\ndata: {"usage":{"prompt_tokens":2,"completion_tokens":2}}\n\n',
    'data: {"usage":{"prompt_tokens":1,"completion_tokens":\n\n',
    'data:  {"two spaces":1}\n\n',
    'data: [DONE]\n\n',
  ];
  /** What the tap must find: event starts in the whole text, and sseUsage of the whole text. */
  const reference = (text: string) => ({
    events: ('\n' + text).match(/\ndata: ?\{/g)?.length ?? 0,
    usage: sseUsage(text),
  });

  it('counts the same events and finds the same usage as sseUsage over the whole text, however it is cut', () => {
    let withUsage = 0;
    for (let n = 0; n < 3000; n++) {
      let text = '';
      for (let k = 1 + rand(12); k > 0; k--) text += events[rand(events.length)] as string;
      const whole = Buffer.from(text);
      // Pieces of 1 to 60 bytes, or one event per piece (how backends write), sometimes cut mid-line.
      const tap = new UsageTap('text/event-stream', true);
      const eventWise = rand(2) === 0;
      for (let at = 0; at < whole.length;) {
        let step = 1 + rand(60);
        if (eventWise) {
          const end = whole.indexOf('\n\n', at);
          step = end < 0 ? whole.length - at : end + 2 - at;
          if (rand(8) === 0) step = 1 + rand(step);
        }
        tap.onData(whole.subarray(at, at + step));
        at += step;
      }
      const expected = reference(text);
      if (expected.usage) withUsage++;
      expect(tap.sseChunks, JSON.stringify(text)).toBe(expected.events);
      expect(tap.usage(), JSON.stringify(text)).toEqual(expected.usage);
    }
    expect(withUsage).toBeGreaterThan(1000);
  });

  it('reads a usage line cut across chunks, or only looking like one when cut, as the whole text does', () => {
    // Every split into three pieces: the final chunks alone would show `data: {"usage"...` where the
    // whole line is `xdata: ...` or a comment, or a usage line whose start is in an earlier chunk.
    const streams = [
      'data: {"choices":[]}\n\nxdata: {"usage":{"prompt_tokens":8,"completion_tokens":8}}\n\ndata: [DONE]\n\n',
      'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n: c data: {"usage":{"prompt_tokens":6,"completion_tokens":6}}\n\n',
      'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\ndata: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n',
    ];
    for (const text of streams) {
      const whole = Buffer.from(text);
      const expected = reference(text);
      for (let i = 1; i < whole.length; i++) {
        for (let j = i; j < whole.length; j++) {
          const tap = new UsageTap('text/event-stream', true);
          tap.onData(whole.subarray(0, i));
          if (j > i) tap.onData(whole.subarray(i, j));
          tap.onData(whole.subarray(j));
          expect(tap.usage(), `${JSON.stringify(text)} cut at ${i}, ${j}`).toEqual(expected.usage);
          expect(tap.sseChunks).toBe(expected.events);
        }
      }
    }
  });
});

/** What the whole parse says: the top-level usage's counts (the spec the trailing reader must match). */
function wholeParseUsage(text: string): { inputTokens: number; outputTokens: number } | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  const u = v !== null && typeof v === 'object' ? (v as { usage?: unknown }).usage : undefined;
  if (u === null || typeof u !== 'object') return null;
  const { prompt_tokens: p, completion_tokens: c } = u as {
    prompt_tokens?: unknown;
    completion_tokens?: unknown;
  };
  if (typeof p !== 'number' && typeof c !== 'number') return null;
  return { inputTokens: typeof p === 'number' ? p : 0, outputTokens: typeof c === 'number' ? c : 0 };
}

describe('usage of a JSON response read from its trailing usage object', () => {
  it('agrees with a whole parse on thousands of generated bodies, whatever their chunking', () => {
    const rand = seededRand(42);
    const usages = [
      '{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}',
      '{"prompt_tokens": 7, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 0}}',
      '{"completion_tokens":4}',
      '{"note":"a } and a \\" in a string","prompt_tokens":2,"completion_tokens":2}',
      '{}',
      'null',
      '5',
      '{"prompt_tokens":"9"}',
    ];
    const members = [
      '"id":"chatcmpl-1"',
      '"object":"chat.completion"',
      '"choices":[{"index":0,"message":{"role":"assistant","content":"the \\"usage\\": {} of it"}}]',
      '"choices":[{"message":{"content":"x"},"usage":{"prompt_tokens":99,"completion_tokens":99}}]',
      '"meta":{"usage":{"prompt_tokens":98,"completion_tokens":98}}',
      '"kind":"usage"',
      '"abc\\"usage":{"prompt_tokens":97,"completion_tokens":97}',
      '"\\u0075sage":{"prompt_tokens":96,"completion_tokens":96}',
      '"service_tier":"default"',
      '"system_fingerprint":null',
      '"list":[1,{"usage":2},"}"]',
    ];
    let fast = 0;
    for (let n = 0; n < 3000; n++) {
      const parts: string[] = [];
      for (let k = rand(5); k > 0; k--) parts.push(members[rand(members.length)] as string);
      if (rand(6) > 0) parts.splice(rand(parts.length + 1), 0, `"usage":${usages[rand(usages.length)]}`);
      const space = [' ', '\n  ', ''][rand(3)] as string;
      let text = `{${space}${parts.join(`,${space}`)}${space}}`;
      if (rand(10) === 0) text = text.slice(0, rand(text.length)); // cut short: malformed
      const body = Buffer.from(text);
      const tap = new UsageTap('application/json', true);
      for (let at = 0; at < body.length;) {
        const step = 1 + rand(40);
        tap.onData(body.subarray(at, at + step));
        at += step;
      }
      const expected = wholeParseUsage(text);
      let valid = true;
      try {
        JSON.parse(text);
      } catch {
        valid = false;
      }
      const t = trailingUsage(body);
      if (t !== undefined) fast++;
      if (valid) {
        expect(tap.usage(), text).toEqual(expected);
        if (t !== undefined) expect(t, text).toEqual(expected);
      }
    }
    // The common shapes take the short way.
    expect(fast).toBeGreaterThan(500);
    expect(
      trailingUsage(
        Buffer.from(
          '{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":2},"service_tier":"default"}',
        ),
      ),
    ).toEqual({ inputTokens: 5, outputTokens: 2 });
  });
});

describe('parseServerLoad', () => {
  it('sums vLLM samples over label sets and ignores comments and longer names', () => {
    const text = [
      '# HELP vllm:num_requests_waiting Number of requests waiting',
      '# TYPE vllm:num_requests_waiting gauge',
      'vllm:num_requests_waiting{model_name="a"} 3',
      'vllm:num_requests_waiting{model_name="b"} 2',
      'vllm:num_requests_waiting_total 100',
      'vllm:num_requests_running{model_name="a"} 7.0',
      'vllm:kv_cache_usage_perc{model_name="a"} 0.42',
    ].join('\n');
    expect(parseServerLoad(text)).toEqual({ waiting: 5, running: 7, kvCacheUsage: 0.42 });
  });

  it('understands SGLang names and returns null for a server without queue metrics', () => {
    expect(
      parseServerLoad('sglang:num_queue_reqs 4\nsglang:num_running_reqs 2\nsglang:token_usage 0.5\n'),
    ).toEqual({ waiting: 4, running: 2, kvCacheUsage: 0.5 });
    expect(parseServerLoad('process_cpu_seconds_total 3\n')).toBeNull();
  });
});

describe('passive outlier ejection', () => {
  const opts = { consecutiveFailures: 3, baseEjectionMs: 1000, maxEjectionMs: 4000 };
  const fresh = () => ({ consecutiveFailures: 0, ejectedUntil: 0, ejections: 0 }) as unknown as EndpointState;

  it('ejects after consecutive failures, doubling the ejection up to the maximum, and forgives after a success', () => {
    const e = fresh();
    const ejected: number[] = [];
    const on = (_e: EndpointState, ms: number) => ejected.push(ms);
    recordOutcome(e, true, 0, opts, on);
    recordOutcome(e, true, 0, opts, on);
    recordOutcome(e, false, 0, opts, on); // a success in between resets the count
    recordOutcome(e, true, 0, opts, on);
    recordOutcome(e, true, 0, opts, on);
    expect(ejected).toEqual([]);
    recordOutcome(e, true, 0, opts, on);
    expect(ejected).toEqual([1000]);
    // Probation after the ejection: one failure ejects again, for longer.
    recordOutcome(e, true, 1000, opts, on);
    recordOutcome(e, true, 3000, opts, on);
    recordOutcome(e, true, 7000, opts, on);
    expect(ejected).toEqual([1000, 2000, 4000, 4000]);
    recordOutcome(e, false, 20_000, opts, on);
    expect(e.ejections).toBe(0);
  });
});

describe('asking for stream usage on the client’s behalf', () => {
  it('adds include_usage only to streaming requests that did not decide it themselves', () => {
    const rewrite = (o: unknown) => {
      const raw = Buffer.from(JSON.stringify(o));
      const request = parseJsonRequest(raw);
      if (request === null) throw new Error('not a JSON object');
      const r = askForStreamUsage(request, raw);
      return r === null ? null : (JSON.parse(r.toString()) as Record<string, unknown>);
    };
    expect(rewrite({ model: 'm', stream: true })).toEqual({
      model: 'm',
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(
      rewrite({ stream: true, stream_options: { continuous_usage_stats: false } })?.stream_options,
    ).toEqual({ continuous_usage_stats: false, include_usage: true });
    expect(rewrite({ stream: true, stream_options: { include_usage: false } })).toBeNull();
    expect(rewrite({ stream: true, stream_options: { include_usage: true } })).toBeNull();
    expect(rewrite({ stream: false })).toBeNull();
    expect(rewrite({ model: 'm' })).toBeNull();
    expect(parseJsonRequest(Buffer.from('{"stream": tru'))).toBeNull();
    expect(parseJsonRequest(Buffer.from('[{"stream": true}]'))).toBeNull();
  });

  it('keeps the rest of the client’s body byte for byte: digits JSON.parse would round, 1.0, escapes, whitespace', () => {
    const raw = Buffer.from(
      ' \r\n\t{ "model" : "m", "seed": 18446744073709551615, "temperature": 1.0,\n' +
        '  "messages": [{"role": "user", "content": "caf\\u00e9 \\"quoted\\" ünï"}], "stream": true }',
    );
    const request = parseJsonRequest(raw);
    if (request === null) throw new Error('not a JSON object');
    const out = askForStreamUsage(request, raw);
    if (out === null) throw new Error('no rewrite');
    const text = out.toString('utf8');
    const inserted = '"stream_options":{"include_usage":true},';
    expect(text.replace(inserted, '')).toBe(raw.toString('utf8'));
    expect(text.indexOf(inserted)).toBe(raw.indexOf('{') + 1);
    expect(JSON.parse(text)).toEqual({ ...request, stream_options: { include_usage: true } });
    // A stream_options member that is not an object is the backend's to refuse, untouched.
    const odd = Buffer.from('{"stream": true, "stream_options": "yes"}');
    expect(askForStreamUsage(parseJsonRequest(odd) as Record<string, unknown>, odd)).toBeNull();
  });

  it('passes whole token events through byte for byte and still drops a usage-only event with spaced empty choices', () => {
    const filter = new UsageChunkFilter();
    const tokens = Buffer.from('data: {"choices":[{"delta":{"content":"a"}}]}\n\n');
    expect(filter.push(tokens)).toBe(tokens);
    const invalidUtf8 = Buffer.concat([
      Buffer.from('data: {"x":"'),
      Buffer.from([0xff]),
      Buffer.from('"}\n\n'),
    ]);
    expect(Buffer.from(filter.push(invalidUtf8)).equals(invalidUtf8)).toBe(true);
    const last = Buffer.from(
      'data: {"choices":[{"delta":{"content":"b"}}],"usage":null}\n\n' +
        'data: {"choices": [ ], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\ndata: [DONE]\n\n',
    );
    expect(filter.push(last).toString()).toBe(
      'data: {"choices":[{"delta":{"content":"b"}}]}\n\ndata: [DONE]\n\n',
    );
  });

  it('removes the "usage": null member asking for usage added to every token chunk, and nothing that only looks like it', () => {
    const filter = new UsageChunkFilter();
    // Compact (vLLM) and Python-spaced members go; text that mentions the member is a JSON string, where
    // its quotes are escaped, so it stays byte for byte, as does a member named otherwise.
    const content = '{\\"usage\\":null} and ,\\"usage\\":null';
    const chunk = Buffer.from(
      `data: {"id":"c1","choices":[{"delta":{"content":"${content}"}}],"usage":null}\n\n` +
        `data: {"id":"c2", "choices": [{"delta": {"content": "x"}}], "usage": null}\n\n` +
        `data: {"id":"c3","choices":[{"delta":{"content":"y"}}],"prompt_usage":null}\n\n`,
    );
    const out = filter.push(chunk).toString();
    expect(out).toBe(
      `data: {"id":"c1","choices":[{"delta":{"content":"${content}"}}]}\n\n` +
        `data: {"id":"c2", "choices": [{"delta": {"content": "x"}}]}\n\n` +
        `data: {"id":"c3","choices":[{"delta":{"content":"y"}}],"prompt_usage":null}\n\n`,
    );
    // Every event is still JSON, and the text kept its escaped quotes.
    const events = out.split('\n\n').filter((e) => e !== '');
    const parsed = events.map(
      (e) => JSON.parse(e.slice('data: '.length)) as { choices: { delta: { content: string } }[] },
    );
    expect(parsed[0]!.choices[0]!.delta.content).toBe('{"usage":null} and ,"usage":null');
    expect(parsed.every((p) => !('usage' in p))).toBe(true);
  });

  it('drops a usage-only event whose data spans several lines, as it drops a one-line one', () => {
    const filter = new UsageChunkFilter();
    const out = filter.push(
      Buffer.from(
        'data: {"choices":[{"delta":{"content":"a"}}]}\n\n' +
          'event: chunk\ndata: {"choices": [],\ndata:  "usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n\n' +
          'data: [DONE]\n\n',
      ),
    );
    expect(out.toString() + filter.flush()).toBe(
      'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: [DONE]\n\n',
    );
  });

  it('keeps the usage-only final chunk from the client, however the stream is split', () => {
    const events = [
      'data: {"choices":[{"delta":{"content":"héllo"}}],"usage":null}\n\n',
      'data: {"choices":[{"delta":{"content":"wörld"}}],"usage":null}\n\n',
      'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n',
      'data: [DONE]\n\n',
    ];
    const whole = Buffer.from(events.join(''));
    const expected = (events[0]! + events[1]!).replaceAll(',"usage":null', '') + events[3]!;
    for (const size of [1, 2, 3, 7, 64, whole.length]) {
      const filter = new UsageChunkFilter();
      let out = '';
      for (let i = 0; i < whole.length; i += size) out += filter.push(whole.subarray(i, i + size));
      out += filter.flush();
      expect(out).toBe(expected);
    }
  });
});
