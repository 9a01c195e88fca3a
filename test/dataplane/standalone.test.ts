// `make run` as a user meets it: the standalone process started from examples/, its printed key and
// curl working, streaming arriving in chunks, a wrong key refused, a manifest edit reloaded, usage
// stored in Postgres, a tenant's credit quota enforced, and Ctrl-C stopping everything.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateApiKey } from '../../dataplane/auth/keys.ts';
import { freePort } from '../../operator/standalone/postgres.ts';
import { suitePool, useTestDatabase } from '../fixtures/postgres.ts';
import { standaloneEnv, startStandalone, waitFor, type StandaloneProcess } from '../fixtures/standalone.ts';

const db = useTestDatabase();

describe('standalone mode (make run)', () => {
  let sa: StandaloneProcess;
  let examples = '';
  let gateway = '';
  let key = '';
  // A tenant with 2 credits a day, and its key from a Secret in the manifests folder.
  const quotaKey = generateApiKey();

  beforeAll(async () => {
    const quotaDemo = [
      'apiVersion: gpugate.io/v1alpha1',
      'kind: Tenant',
      'metadata: { name: quota-demo, namespace: default }',
      'spec:',
      '  quota: { credits: 2, period: Daily }',
      '---',
      'apiVersion: v1',
      'kind: Secret',
      'metadata: { name: quota-demo-key, namespace: default }',
      `stringData: { key: ${quotaKey} }`,
      '---',
      'apiVersion: gpugate.io/v1alpha1',
      'kind: ApiKey',
      'metadata: { name: quota-demo, namespace: default }',
      'spec:',
      '  tenant: quota-demo',
      '  secretRef: { name: quota-demo-key, key: key }',
      '',
    ].join('\n');
    const env = standaloneEnv({
      simPort: await freePort(),
      databaseUrl: db.url,
      extra: { 'quota-demo.yaml': quotaDemo },
    });
    examples = env.GPUGATE_EXAMPLES;
    sa = await startStandalone(env);
    ({ gateway, key } = sa);
  });

  afterAll(() => sa?.kill());

  it('prints a URL, a key and a curl line that returns a simulator completion', async () => {
    const curl = /(curl -s .*\\\n.*)/.exec(sa.out())![1]!;
    const body = /-d '(.*)'/.exec(curl)![1]!;
    const res = await request(`${gateway}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body,
    });
    const json = (await res.body.json()) as { choices: unknown[]; usage: { completion_tokens: number } };
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-sim-name']).toBe('gpusim-standalone');
    expect(json.choices).toHaveLength(1);
    expect(json.usage.completion_tokens).toBeGreaterThan(0);
  });

  it('streams: SSE chunks reach the client before the stream ends', async () => {
    const res = await request(`${gateway}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'sim-llama-8b',
        stream: true,
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 24,
      }),
    });
    expect(res.headers['content-type']).toContain('text/event-stream');
    const reads: string[] = [];
    for await (const chunk of res.body) reads.push((chunk as Buffer).toString());
    // The simulator emits one token per 25 ms decode step, 24 of them; a buffering proxy would hand
    // the whole stream over in one read. (How many reads a loaded machine coalesces varies, so the
    // test asks only that the first read came before the end.)
    expect(reads.length).toBeGreaterThanOrEqual(2);
    expect(reads[0]).toContain('data: {');
    expect(reads[0]).not.toContain('[DONE]');
    expect(reads.join('')).toContain('data: [DONE]');
  });

  it('refuses a wrong key with a JSON 401 that does not echo it', async () => {
    const wrong = key.slice(0, -1) + (key.endsWith('A') ? 'B' : 'A');
    const res = await request(`${gateway}/v1/models`, { headers: { authorization: `Bearer ${wrong}` } });
    const text = await res.body.text();
    expect(res.statusCode).toBe(401);
    expect(JSON.parse(text).error.type).toBe('authentication_error');
    expect(text).not.toContain(wrong);
  });

  it('records usage in Postgres', async () => {
    const pool = suitePool(db, 1);
    try {
      await waitFor('usage rows', async () => {
        const { rows } = await pool.query<{ n: string }>('SELECT count(*) AS n FROM usage_events');
        return Number(rows[0]!.n) >= 2;
      });
    } finally {
      await pool.end();
    }
  });

  it("enforces a tenant's credit quota: 429 quota_exceeded once its 2 credits are spent", async () => {
    // An image-job submit costs exactly 1 credit (the route's cost), so the quota admits exactly two.
    const submit = async () => {
      const res = await request(`${gateway}/v1/images/jobs`, {
        method: 'POST',
        headers: { authorization: `Bearer ${quotaKey}`, 'content-type': 'application/octet-stream' },
        body: Buffer.alloc(64, 1),
      });
      const text = await res.body.text();
      return { status: res.statusCode, text };
    };
    const first = await submit();
    const second = await submit();
    expect([first.status, second.status].map((s) => s >= 200 && s < 300)).toEqual([true, true]);
    const refused = await submit();
    expect(refused.status).toBe(429);
    const error = (JSON.parse(refused.text) as { error: { code: string; message: string } }).error;
    expect(error.code).toBe('quota_exceeded');
    const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
    expect(error.message).toContain(tomorrow);
    const pool = suitePool(db, 1);
    try {
      await waitFor('the 2 credits settled in Postgres', async () => {
        const { rows } = await pool.query<{ used: number }>(
          "SELECT used::float8 AS used FROM quota_balances WHERE subject_kind = 'tenant' AND subject_id = 'default/quota-demo'",
        );
        return rows[0]?.used === 2;
      });
    } finally {
      await pool.end();
    }
  });

  it('reloads when a manifest changes: a suspended tenant gets 403', async () => {
    const tenants = join(examples, 'tenants.yaml');
    writeFileSync(
      tenants,
      readFileSync(tenants, 'utf8').replace(
        'displayName: Research team',
        'displayName: Research team\n  suspended: true',
      ),
    );
    await waitFor('the reload', async () => {
      const res = await request(`${gateway}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
      await res.body.dump();
      return res.statusCode === 403;
    });
  });

  it('stops cleanly on Ctrl-C (SIGINT)', async () => {
    await sa.stop();
    expect(sa.exitCode()).toBe(0);
    // Stopped in order: leases settled and returned and usage flushed while Postgres was still up.
    expect(sa.out()).toContain('usage flushed');
    const pool = suitePool(db, 1);
    try {
      const leases = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM quota_leases');
      expect(leases.rows[0]!.n).toBe(0);
      const reserved = await pool.query<{ r: number }>(
        'SELECT coalesce(sum(reserved), 0)::float8 AS r FROM quota_balances',
      );
      expect(reserved.rows[0]!.r).toBe(0);
    } finally {
      await pool.end();
    }
  });
});
