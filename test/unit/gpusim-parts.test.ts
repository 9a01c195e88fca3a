// The simulator's tokenizer, option validation and job queue: the parts gateway tests rely on to predict
// token counts, start fleets from flags, and follow an async job.
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../fixtures/gpusim/clock.ts';
import { JobQueue, imageResult, imageResultBytes } from '../fixtures/gpusim/jobs.ts';
import { OptionError, parseCliArgs, resolveOptions } from '../fixtures/gpusim/options.ts';
import {
  countChatPromptTokens,
  countCompletionPromptTokens,
  countTokens,
  generateTokens,
} from '../fixtures/gpusim/tokenizer.ts';

describe('gpusim tokenizer', () => {
  it('counts about four characters per token, and four extra tokens per chat message', () => {
    expect(countTokens('')).toBe(0);
    expect(countTokens('abcd')).toBe(1);
    expect(countTokens('abcde')).toBe(2);
    expect(countCompletionPromptTokens('')).toBe(1);
    expect(countCompletionPromptTokens([1, 2, 3])).toBe(3);
    expect(
      countChatPromptTokens([
        { role: 'system', content: 'be brief' },
        { role: 'user', content: [{ type: 'text', text: 'hello' }] },
      ]),
    ).toBe(2 + 4 + (2 + 4));
  });

  it('generates deterministic 4-character tokens, so the text re-counts to completion_tokens', () => {
    const tokens = generateTokens(42, 50);
    expect(generateTokens(42, 50)).toEqual(tokens);
    expect(generateTokens(43, 50)).not.toEqual(tokens);
    expect(tokens.every((t) => t.length === 4)).toBe(true);
    expect(countTokens(tokens.join(''))).toBe(50);
  });

  it('rejects malformed prompts with a message naming the field', () => {
    expect(() => countChatPromptTokens([])).toThrow(/messages must be a non-empty array/);
    expect(() => countChatPromptTokens([{ content: 'x' }])).toThrow(/messages\[0\]/);
    expect(() => countCompletionPromptTokens(['a', 'b'])).toThrow(/prompt must be/);
  });
});

describe('gpusim options', () => {
  it('parses flags into options and faults', () => {
    const args = parseCliArgs([
      '--port',
      '0',
      '--models',
      'a, b',
      '--speed',
      '0.5',
      '--hang',
      '--fail-rate',
      '0.1',
    ]);
    expect(args.options).toEqual({ port: 0, models: ['a', 'b'], speed: 0.5 });
    expect(args.faults).toEqual({ hang: true, failRate: 0.1 });
  });

  it('names the flag, the value and what is allowed when a value is bad', () => {
    expect(() => parseCliArgs(['--speed', '0'])).toThrow('--speed must be a number > 0, got "0"');
    expect(() => parseCliArgs(['--max-batch', '1.5'])).toThrow(
      '--max-batch must be an integer >= 1, got "1.5"',
    );
    expect(() => parseCliArgs(['--port', '70000'])).toThrow('--port must be an integer from 0 to 65535');
    expect(() => parseCliArgs(['--fail-rate', 'x'])).toThrow(
      '--fail-rate must be a number from 0 to 1, got "x"',
    );
    expect(() => parseCliArgs(['--nope'])).toThrow(OptionError);
    expect(() => resolveOptions({ kvCacheTokens: -1 })).toThrow(
      'kvCacheTokens must be an integer >= 1, got -1',
    );
  });
});

describe('gpusim image jobs', () => {
  it('go queued -> running with progress -> done, one at a time in submission order', () => {
    const clock = new ManualClock();
    const jobs = new JobQueue(clock, 1000, 1);
    const first = jobs.submit(10, 'image/png');
    const second = jobs.submit(20, 'image/png');
    expect(jobs.view(first)).toMatchObject({ status: 'running', progress: 0 });
    expect(jobs.view(second)).toMatchObject({ status: 'queued', progress: 0 });
    clock.advance(250);
    expect(jobs.view(first)).toMatchObject({ status: 'running', progress: 0.25 });
    clock.advance(1000);
    expect(jobs.view(first)).toMatchObject({ status: 'done', progress: 1 });
    expect(jobs.view(second)).toMatchObject({ status: 'running', progress: 0.25 });
    expect(jobs.get(second.id)).toBe(second);
  });

  it('produce a PNG-signed result whose size depends on the input size', () => {
    expect(imageResultBytes(0)).toBe(1024);
    expect(imageResultBytes(64 * 1000)).toBe(2024);
    const out = imageResult(5000);
    expect(out.length).toBe(imageResultBytes(5000));
    expect(out.subarray(0, 4).toString('latin1')).toBe('\x89PNG');
    expect(imageResult(5000)).toEqual(out);
  });
});
