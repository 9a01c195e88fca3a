// The GPU backend simulator over real sockets, with undici as the client, the way gateway tests use it.
// Where a test needs the engine to stand still (queues, aborts, job progress) it injects a ManualClock,
// so nothing below depends on how fast this machine is.
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { FormData, request } from 'undici';
import { ManualClock } from '../fixtures/gpusim/clock.ts';
import { imageResultBytes } from '../fixtures/gpusim/jobs.ts';
import { startSimulator, type Simulator, type StartOptions } from '../fixtures/gpusim/server.ts';
import {
  countChatPromptTokens,
  countCompletionPromptTokens,
  countTokens,
} from '../fixtures/gpusim/tokenizer.ts';

// JSON bodies are checked field by field with expect(); a schema type per response would add nothing.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any;

const sims: Simulator[] = [];
afterEach(async () => {
  await Promise.all(sims.splice(0).map((s) => s.close()));
});

async function sim(options: StartOptions = {}): Promise<Simulator> {
  const s = await startSimulator(options);
  sims.push(s);
  return s;
}

async function post(s: Simulator, path: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await request(s.url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return {
    status: res.statusCode,
    headers: res.headers,
    json: (await res.body.json()) as Json,
  };
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

// Parses the Prometheus text format strictly enough to fail on a malformed line.
function parseExposition(text: string): { types: Map<string, string>; samples: Sample[] } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ')) continue;
    const type = /^# TYPE ([a-zA-Z_:][\w:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (type) {
      types.set(type[1]!, type[2]!);
      continue;
    }
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`bad exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of (m[2] ?? '').split(/,(?=[a-zA-Z_])/).filter(Boolean)) {
      const lm = /^([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"$/.exec(pair);
      if (!lm) throw new Error(`bad label ${pair} in ${line}`);
      labels[lm[1]!] = lm[2]!;
    }
    const value = Number(m[3]);
    if (Number.isNaN(value) && m[3] !== 'NaN') throw new Error(`bad value in ${line}`);
    samples.push({ name: m[1]!, labels, value });
  }
  return { types, samples };
}

async function metric(s: Simulator, name: string): Promise<number> {
  const res = await request(s.url + '/metrics');
  const { samples } = parseExposition(await res.body.text());
  const sample = samples.find((x) => x.name === name);
  if (!sample) throw new Error(`${name} missing`);
  return sample.value;
}

/** Reads an SSE body, noting for each event whether the engine was still generating when it arrived. */
async function readEvents(
  body: AsyncIterable<Buffer>,
  onEvent: (data: string) => void = () => {},
): Promise<string[]> {
  const events: string[] = [];
  let buffered = '';
  for await (const chunk of body) {
    buffered += chunk.toString('utf8');
    let end: number;
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      expect(event.startsWith('data: ')).toBe(true);
      events.push(event.slice('data: '.length));
      onEvent(event.slice('data: '.length));
    }
  }
  expect(buffered).toBe('');
  return events;
}

describe('gpusim OpenAI API', () => {
  it('lists its models and names itself in x-sim-name', async () => {
    const s = await sim({ name: 'gpu-a', models: ['m1', 'm2'] });
    const res = await request(s.url + '/v1/models');
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-sim-name']).toBe('gpu-a');
    const list = (await res.body.json()) as { object: string; data: { id: string; object: string }[] };
    expect(list.object).toBe('list');
    expect(list.data.map((m) => [m.id, m.object])).toEqual([
      ['m1', 'model'],
      ['m2', 'model'],
    ]);
  });

  it('answers chat and text completions with usage that matches the documented tokenizer', async () => {
    const s = await sim({ decodeMsPerToken: 0, prefillMsPerToken: 0, outputTokens: 20 });
    const messages = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'How many GPUs does a cluster of 8 nodes with 8 GPUs each have?' },
    ];
    const chat = await post(s, '/v1/chat/completions', { model: 'sim-llama', messages, max_tokens: 7 });
    expect(chat.status).toBe(200);
    expect(chat.json.object).toBe('chat.completion');
    expect(chat.json.usage).toEqual({
      prompt_tokens: countChatPromptTokens(messages),
      completion_tokens: 7,
      total_tokens: countChatPromptTokens(messages) + 7,
    });
    expect(countTokens(chat.json.choices[0].message.content)).toBe(7);
    expect(chat.json.choices[0].finish_reason).toBe('length');

    const prompt = 'Once upon a time';
    const text = await post(s, '/v1/completions', { model: 'sim-llama', prompt, max_tokens: 100 });
    expect(text.json.object).toBe('text_completion');
    // max_tokens above the natural answer length: the model "stops" at outputTokens.
    expect(text.json.usage).toMatchObject({
      prompt_tokens: countCompletionPromptTokens(prompt),
      completion_tokens: 20,
    });
    expect(text.json.choices[0].finish_reason).toBe('stop');
    expect(
      (await post(s, '/v1/completions', { model: 'sim-llama', prompt, max_tokens: 100 })).json.choices,
    ).toEqual(text.json.choices);
  });

  it('streams one SSE chunk per token while generating, then a usage chunk and [DONE]', async () => {
    const s = await sim({ decodeMsPerToken: 5, outputTokens: 8 });
    const messages = [{ role: 'user', content: 'stream please' }];
    const res = await request(s.url + '/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'sim-llama',
        messages,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    const stillGenerating: boolean[] = [];
    const events = await readEvents(res.body, () => stillGenerating.push(s.stats().engine.running > 0));
    // The first token reached the client while the sequence was still running in the engine: chunks are
    // written as tokens are produced, not at the end.
    expect(stillGenerating[0]).toBe(true);
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
    const tokenChunks = chunks.slice(0, -1);
    expect(tokenChunks).toHaveLength(8);
    expect(tokenChunks[0].choices[0].delta.role).toBe('assistant');
    expect(tokenChunks.every((c) => c.object === 'chat.completion.chunk' && c.usage === null)).toBe(true);
    expect(tokenChunks.map((c) => c.choices[0].finish_reason)).toEqual([...Array(7).fill(null), 'stop']);
    const text = tokenChunks.map((c) => c.choices[0].delta.content).join('');
    const usage = chunks.at(-1);
    expect(usage.choices).toEqual([]);
    expect(usage.usage).toEqual({
      prompt_tokens: countChatPromptTokens(messages),
      completion_tokens: countTokens(text),
      total_tokens: countChatPromptTokens(messages) + 8,
    });
    // Same request without streaming gives the same text.
    const whole = await post(s, '/v1/chat/completions', { model: 'sim-llama', messages });
    expect(whole.json.choices[0].message.content).toBe(text);
  });

  it('streams text completions without a usage chunk unless asked', async () => {
    const s = await sim({ decodeMsPerToken: 0, prefillMsPerToken: 0 });
    const res = await request(s.url + '/v1/completions', {
      method: 'POST',
      body: JSON.stringify({ model: 'sim-llama', prompt: 'hi', max_tokens: 3, stream: true }),
    });
    const events = await readEvents(res.body);
    expect(events).toHaveLength(4);
    expect(events.slice(0, 3).map((e) => JSON.parse(e).object)).toEqual(Array(3).fill('text_completion'));
    expect(JSON.parse(events[0]!)).not.toHaveProperty('usage');
  });

  it('returns OpenAI-shaped errors: 404 unknown model, 400 invalid JSON or prompt, 405, 404 path', async () => {
    const s = await sim();
    const unknown = await post(s, '/v1/chat/completions', {
      model: 'gpt-9',
      messages: [{ role: 'user', content: 'x' }],
    });
    expect(unknown.status).toBe(404);
    expect(unknown.json.error).toMatchObject({ code: 'model_not_found', param: 'model' });
    expect(unknown.json.error.message).toContain('gpt-9');
    const invalid = await post(s, '/v1/chat/completions', '{"model": "sim-llama",');
    expect(invalid.status).toBe(400);
    expect(invalid.json.error.code).toBe('invalid_json');
    const noMessages = await post(s, '/v1/chat/completions', { model: 'sim-llama' });
    expect(noMessages.status).toBe(400);
    expect(noMessages.json.error.param).toBe('messages');
    const tooLong = await post(s, '/v1/completions', { prompt: 'x'.repeat(4 * 40_000) });
    expect(tooLong.status).toBe(400);
    expect(tooLong.json.error.code).toBe('context_length_exceeded');
    const get = await request(s.url + '/v1/chat/completions');
    expect(get.statusCode).toBe(405);
    expect(get.headers.allow).toBe('POST');
    await get.body.dump();
    const nowhere = await request(s.url + '/v2/nothing');
    expect(nowhere.statusCode).toBe(404);
    expect(((await nowhere.body.json()) as { error: { code: string } }).error.code).toBe('not_found');
  });
});

describe('gpusim metrics, health and test hooks', () => {
  it('exposes vLLM metrics that show the waiting queue under load, and counts client aborts', async () => {
    const clock = new ManualClock(); // the engine never steps on its own: the queue stays put
    const s = await sim({
      clock,
      maxBatch: 2,
      models: ['big-model'],
      prefillMsPerToken: 0,
      decodeMsPerToken: 20,
    });
    const controllers = [0, 1, 2, 3, 4].map(() => new AbortController());
    const streams = await Promise.all(
      controllers.map((c) =>
        request(s.url + '/v1/chat/completions', {
          method: 'POST',
          body: JSON.stringify({ messages: [{ role: 'user', content: 'hello world' }], stream: true }),
          signal: c.signal,
        }),
      ),
    );
    const res = await request(s.url + '/metrics');
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0.0.4/);
    const { types, samples } = parseExposition(await res.body.text());
    expect(types.get('vllm:num_requests_waiting')).toBe('gauge');
    expect(types.get('vllm:time_to_first_token_seconds')).toBe('histogram');
    expect(types.get('vllm:prompt_tokens_total')).toBe('counter');
    const value = (name: string): number | undefined => samples.find((x) => x.name === name)?.value;
    // One sequence started a step alone; the rest queue behind it until that step ends.
    expect(value('vllm:num_requests_running')).toBe(1);
    expect(value('vllm:num_requests_waiting')).toBe(4);
    expect(value('vllm:kv_cache_usage_perc')).toBeGreaterThan(0);
    expect(value('vllm:kv_cache_usage_perc')).toBeLessThanOrEqual(1);
    expect(samples.every((x) => x.labels.model_name === 'big-model')).toBe(true);
    clock.advance(20); // one step ends: the first token is out and the second sequence joins the batch
    expect(await metric(s, 'vllm:num_requests_running')).toBe(2);
    expect(await metric(s, 'vllm:num_requests_waiting')).toBe(3);
    expect(await metric(s, 'vllm:time_to_first_token_seconds_count')).toBe(1);

    for (const c of controllers) c.abort();
    await Promise.all(streams.map((r) => r.body.dump().catch(() => {})));
    await vi.waitFor(() => expect(s.stats().aborts).toBe(5));
    expect(s.stats().abortsByPath).toEqual({ '/v1/chat/completions': 5 });
    expect(s.stats().engine).toMatchObject({ running: 0, waiting: 0, cancelledTotal: 5 });
    expect(s.requests().filter((r) => r.aborted)).toHaveLength(5);
  });

  it('records recent requests with their headers and counts requests per path', async () => {
    const s = await sim({ decodeMsPerToken: 0, recordRequests: 3 });
    for (let i = 0; i < 4; i++)
      await post(
        s,
        '/v1/completions',
        { prompt: 'p' },
        { 'x-gpugate-tenant': `team-${i}`, 'x-request-id': `r${i}` },
      );
    await (await request(s.url + '/health')).body.dump();
    const recorded = s.requests();
    expect(recorded.map((r) => r.headers['x-gpugate-tenant'] ?? r.path)).toEqual([
      'team-2',
      'team-3',
      '/health',
    ]);
    expect(recorded[0]).toMatchObject({
      method: 'POST',
      path: '/v1/completions',
      bodyBytes: '{"prompt":"p"}'.length,
      aborted: false,
    });
    const overHttp = await request(s.url + '/_sim/requests');
    const listed = (await overHttp.body.json()) as { path: string; headers: Record<string, string> }[];
    expect(listed.map((r) => r.headers['x-request-id'] ?? r.path)).toEqual([
      'r3',
      '/health',
      '/_sim/requests',
    ]);
    expect(s.stats().requestsByPath).toEqual({ '/v1/completions': 4, '/health': 1, '/_sim/requests': 1 });
    expect(s.stats().responsesByStatus).toEqual({ '200': 6 });
  });

  it('fails /health when set unhealthy, and injects failures, hangs and delays on the API', async () => {
    const s = await sim({ decodeMsPerToken: 0 });
    s.setHealthy(false);
    expect((await request(s.url + '/health')).statusCode).toBe(503);
    s.setHealthy(true);
    expect((await request(s.url + '/health')).statusCode).toBe(200);

    s.setFault({ failNext: 2, failStatus: 503 });
    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push((await post(s, '/v1/completions', { prompt: 'x' })).status);
    expect(statuses).toEqual([503, 503, 200]);

    s.setFault({ failRate: 1 });
    expect((await post(s, '/v1/completions', { prompt: 'x' })).json.error.code).toBe('injected_fault');
    expect((await request(s.url + '/health')).statusCode).toBe(200);
    s.clearFaults();

    s.setFault({ firstByteDelayMs: 20 });
    expect((await post(s, '/v1/completions', { prompt: 'x' })).status).toBe(200);
    s.clearFaults();

    s.setFault({ hang: true });
    const controller = new AbortController();
    const hung = request(s.url + '/v1/completions', {
      method: 'POST',
      body: '{}',
      signal: controller.signal,
    });
    await vi.waitFor(() => expect(s.stats().hanging).toBe(1));
    controller.abort();
    await expect(hung).rejects.toThrow();
    await vi.waitFor(() => expect(s.stats()).toMatchObject({ hanging: 0, aborts: 1 }));
  });

  it('takes faults and health over HTTP for simulators running as separate processes', async () => {
    const s = await sim();
    const fault = await post(s, '/_sim/fault', { failNext: 1 });
    expect(fault.json.faults.failNext).toBe(1);
    expect((await post(s, '/v1/completions', { prompt: 'x' })).status).toBe(500);
    expect((await post(s, '/_sim/healthy', { healthy: false })).status).toBe(200);
    expect((await request(s.url + '/health')).statusCode).toBe(503);
    const bad = await post(s, '/_sim/fault', { failRate: 2 });
    expect(bad.status).toBe(400);
    expect(bad.json.error.message).toBe('failRate must be a number from 0 to 1, got 2');
    const params = await post(s, '/_sim/params', { speed: 0.5 });
    expect(params.json.params.speed).toBe(0.5);
    expect((await post(s, '/_sim/reset', {})).status).toBe(200);
    expect(s.stats().requests).toBe(0);
  });
});

describe('gpusim image jobs', () => {
  it('accepts a multipart upload, reports progress, and serves the result once done', async () => {
    const clock = new ManualClock();
    const s = await sim({ clock, jobMs: 1000 });
    const form = new FormData();
    form.append('image', new Blob([Buffer.alloc(200_000, 7)], { type: 'image/png' }), 'in.png');
    form.append('scale', '2');
    const submit = await request(s.url + '/v1/images/jobs', { method: 'POST', body: form });
    expect(submit.statusCode).toBe(200);
    const { task_id, status } = (await submit.body.json()) as { task_id: string; status: string };
    expect(status).toBe('queued');

    const statusOf = async () => (await (await request(`${s.url}/status/${task_id}`)).body.json()) as Json;
    const first = await statusOf();
    expect(first).toMatchObject({ task_id, status: 'running', progress: 0 });
    expect(first.input_bytes).toBeGreaterThan(200_000);
    const early = await request(`${s.url}/download/${task_id}`);
    expect(early.statusCode).toBe(409);
    await early.body.dump();
    clock.advance(400);
    expect(await statusOf()).toMatchObject({ status: 'running', progress: 0.4 });
    clock.advance(600);
    expect(await statusOf()).toMatchObject({ status: 'done', progress: 1 });

    const download = await request(`${s.url}/download/${task_id}`);
    expect(download.statusCode).toBe(200);
    expect(download.headers['content-type']).toBe('image/png');
    const bytes = Buffer.from(await download.body.arrayBuffer());
    expect(bytes.length).toBe(imageResultBytes(first.input_bytes));
    const missing = await request(`${s.url}/status/no-such-task`);
    expect(missing.statusCode).toBe(404);
    await missing.body.dump();
  });

  it('streams large uploads without buffering them and rejects over-limit ones with 413', async () => {
    const s = await sim({ maxUploadBytes: 4 * 1024 * 1024 });
    // A chunked upload of exactly the limit, produced on the fly.
    async function* chunks(total: number) {
      const piece = Buffer.alloc(64 * 1024, 1);
      for (let sent = 0; sent < total; sent += piece.length)
        yield piece.subarray(0, Math.min(piece.length, total - sent));
    }
    const ok = await request(s.url + '/v1/images/jobs', {
      method: 'POST',
      body: Readable.from(chunks(4 * 1024 * 1024)),
    });
    expect(ok.statusCode).toBe(200);
    await ok.body.dump();
    expect(s.stats().uploadBytes).toBe(4 * 1024 * 1024);

    const declared = await request(s.url + '/v1/images/jobs', {
      method: 'POST',
      body: Buffer.alloc(4 * 1024 * 1024 + 1),
    });
    expect(declared.statusCode).toBe(413);
    expect(((await declared.body.json()) as { error: { code: string } }).error.code).toBe('too_large');

    const chunked = await request(s.url + '/v1/images/jobs', {
      method: 'POST',
      body: Readable.from(chunks(5 * 1024 * 1024)),
    });
    expect(chunked.statusCode).toBe(413);
    await chunked.body.dump();
  });
});
