// The CLI's cluster target retries what the API server asks it to: 429 with Retry-After (e.g. "storage
// is (re)initializing" just after a CRD changed), bounded in attempts and total wait; nothing else.
import { ApiException } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { retryTooManyRequests } from '../../operator/cli/kube-target.ts';

function failing(code: number, retryAfter?: string): ApiException<unknown> {
  return new ApiException(
    code,
    'Unsuccessful HTTP Request',
    { message: 'storage is (re)initializing' },
    {
      ...(retryAfter === undefined ? {} : { 'retry-after': retryAfter }),
    },
  );
}

describe('retryTooManyRequests', () => {
  it('waits Retry-After between 429s and returns the first success', async () => {
    const slept: number[] = [];
    let calls = 0;
    const value = await retryTooManyRequests(
      () =>
        ++calls < 3 ? Promise.reject(failing(429, calls === 1 ? '2' : undefined)) : Promise.resolve('ok'),
      (ms) => {
        slept.push(ms);
        return Promise.resolve();
      },
    );
    expect(value).toBe('ok');
    expect(calls).toBe(3);
    expect(slept).toEqual([2000, 1000]);
  });

  it('does not retry other statuses', async () => {
    let calls = 0;
    const err = failing(409);
    await expect(
      retryTooManyRequests(
        () => {
          calls++;
          return Promise.reject(err);
        },
        () => Promise.resolve(),
      ),
    ).rejects.toBe(err);
    expect(calls).toBe(1);
  });

  it('gives up with the last 429 once the attempts or the total wait run out', async () => {
    let calls = 0;
    const slept: number[] = [];
    await expect(
      retryTooManyRequests(
        () => {
          calls++;
          return Promise.reject(failing(429, '60'));
        },
        (ms) => {
          slept.push(ms);
          return Promise.resolve();
        },
      ),
    ).rejects.toMatchObject({ code: 429 });
    // 60 s is capped to 5 s a wait, and 15 s in all: three waits, four calls.
    expect(slept).toEqual([5000, 5000, 5000]);
    expect(calls).toBe(4);
    calls = 0;
    await expect(
      retryTooManyRequests(
        () => {
          calls++;
          return Promise.reject(failing(429));
        },
        () => Promise.resolve(),
      ),
    ).rejects.toMatchObject({ code: 429 });
    expect(calls).toBe(6);
  });
});
