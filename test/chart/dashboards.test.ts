// Every query of every dashboard panel returns data from a real Prometheus (the Debian package, run as a process
// on loopback) scraping a data plane that serves GPU-simulator traffic, meters into Postgres and enforces quotas,
// plus the simulators' own vLLM metrics. The test walks the dashboard JSON, substitutes the variables like
// Grafana's "All", and asks Prometheus; an empty answer fails, except for the PENDING panels listed below, which
// must stay empty (so the list is kept honest when their metrics arrive). The operator runs too (node
// operator/main.ts against the harness API server, with its own service account, reconciling a Tenant and an
// ApiKey and pushing to the data plane, which refuses: its PUT /config is off here), so the Control plane
// dashboard's operator panels are asked as well. The operator reads usage from the same database (DATABASE_URL):
// its Tenant has a daily quota and a usage row, so the quota gauges behind "Quota left" have a known value.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { migrate } from '../../dataplane/metering/migrate.ts';
import { createQuotaManager, type QuotaManager } from '../../dataplane/metering/quota.ts';
import { createMeteringWriter, type MeteringWriter } from '../../dataplane/metering/writer.ts';
import { createDataPlane, type DataPlane } from '../../dataplane/server.ts';
import { apiKey, backend, chat, quietLogger, snapshot, tenant } from '../dataplane/harness.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { useTestDatabase } from '../fixtures/postgres.ts';
import { kubectl, newNamespace } from '../cluster/harness.ts';
import { installCrds, operatorServiceAccount, startOperatorProcess } from '../cluster/operator-helpers.ts';
import type { Proc } from '../fixtures/processes.ts';
import { CHART } from './helm.ts';

/**
 * Panels (or one query of a panel, "[refId]") that cannot return data yet, and why (docs/operations.md,
 * "Metric gaps").
 */
const PENDING: Record<string, string> = {};

const NAMESPACE = 'gpugate-test';

interface Panel {
  type: string;
  title: string;
  targets?: { expr: string; refId: string }[];
}
interface Dashboard {
  title: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query: unknown }[] };
}

const dashboards: Dashboard[] = readdirSync(join(CHART, 'dashboards'))
  .filter((f) => f.endsWith('.json'))
  .map((f) => JSON.parse(readFileSync(join(CHART, 'dashboards', f), 'utf8')) as Dashboard);

/** Grafana's substitution with every variable on "All" (allValue .*) and the test's namespace. */
function substitute(expr: string): string {
  return expr
    .replaceAll('$__rate_interval', '30s')
    .replaceAll('$__range', '2m')
    .replaceAll('$namespace', NAMESPACE)
    .replaceAll('$tenant', '.*')
    .replaceAll('$backend', '.*');
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

describe('dashboards on a real Prometheus', () => {
  const db = useTestDatabase();
  let pool: pg.Pool;
  let writer: MeteringWriter;
  let quota: QuotaManager;
  let plane: DataPlane;
  let sims: Simulator[] = [];
  let prometheus: ChildProcess | null = null;
  let operator: (Proc & { url: string }) | null = null;
  let promUrl = '';
  let operatorTenant = '';

  async function query(expr: string): Promise<unknown[]> {
    const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = (await res.json()) as { status: string; error?: string; data?: { result: unknown[] } };
    if (body.status !== 'success') throw new Error(`${expr}: ${body.error}`);
    return body.data!.result;
  }

  beforeAll(async () => {
    pool = new pg.Pool({ connectionString: db.url, max: 4 });
    await migrate(pool);
    const registry = new Registry();
    writer = createMeteringWriter({ pool, registry, logger: quietLogger });
    quota = createQuotaManager({ pool, registry, syncIntervalMs: 100 });
    sims = [
      await startSimulator({ host: '127.0.0.1', port: 0, models: ['sim-llama-8b'] }),
      await startSimulator({ host: '127.0.0.1', port: 0, models: ['tight-model'] }),
    ];
    const dead = `http://127.0.0.1:${await freePort()}`;
    const healthCheck = {
      path: '/health',
      intervalMs: 500,
      timeoutMs: 300,
      healthyThreshold: 1,
      unhealthyThreshold: 1,
    };
    const research = apiKey('team/research');
    const trial = apiKey('team/trial');
    const limited = apiKey('team/limited');
    const s = snapshot({
      backends: [
        // One good and one dead endpoint, passive health only: connect errors, retries, ejections.
        backend('team/llama', [sims[0]!.url, dead], { models: ['sim-llama-8b'] }),
        // Only a dead endpoint with active checks: failing checks, 5xx and panic routing.
        backend('team/broken', [dead], { models: ['broken-model'], healthCheck }),
        // One slot per endpoint and a one-request queue: queueing and queue rejections.
        backend('team/tight', [sims[1]!.url], {
          models: ['tight-model'],
          balancing: {
            policy: 'LeastRequest',
            maxInflightPerEndpoint: 1,
            maxQueue: 1,
            queueTimeoutMs: 5_000,
            metricsPath: '/metrics',
          },
        }),
      ],
      tenants: [
        tenant('team/research'),
        // Three credits a day and one model: quota refusals and 403s.
        tenant('team/trial', { allowedModels: ['sim-llama-8b'], quota: { credits: 3, period: 'Daily' } }),
        // Six requests a minute: the rest of its traffic is refused by its rate limit (the 429 panels).
        tenant('team/limited', { limits: { requestsPerMinute: 6 } }),
      ],
      keys: [research.key, trial.key, limited.key],
    });
    plane = await createDataPlane({
      logger: quietLogger,
      registry,
      usageSink: writer,
      quota,
      listen: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0, token: null },
    });
    expect(plane.applySnapshot(s)).toMatchObject({ accepted: true });

    await installCrds();
    const opNs = await newNamespace('dashboards');
    const kubeconfig = await operatorServiceAccount(opNs);
    await kubectl([
      'create',
      'secret',
      'generic',
      'push-token',
      '-n',
      opNs,
      '--from-literal=token=dashboards',
    ]);
    await kubectl(['apply', '-n', opNs, '-f', '-'], {
      input: `
apiVersion: gpugate.io/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {quota: {credits: 1000, period: Daily}}
---
apiVersion: gpugate.io/v1alpha1
kind: ApiKey
metadata: {name: acme-key}
spec: {tenant: acme}
`,
    });
    // 250 of acme's 1000 daily credits used: "Quota left" is 0.75.
    await pool.query(
      `INSERT INTO usage_daily (tenant, day, key_id, backend, model, requests, input_tokens, output_tokens, credits, errors)
       VALUES ($1, $2, 'k1', 'b', 'm', 5, 100, 50, 250, 0)`,
      [`${opNs}/acme`, new Date().toISOString().slice(0, 10)],
    );
    operatorTenant = `${opNs}/acme`;
    // A long lease: a loaded machine must not make it lose leadership while Prometheus scrapes.
    operator = await startOperatorProcess({
      ns: opNs,
      kubeconfig,
      dataplaneUrls: [plane.adminUrl],
      leaseDurationMs: 60_000,
      extra: ['--usage-interval-ms', '1000'],
      env: { DATABASE_URL: db.url },
    });

    const dir = mkdtempSync(join(tmpdir(), 'gpugate-prometheus-'));
    const promPort = await freePort();
    promUrl = `http://127.0.0.1:${promPort}`;
    writeFileSync(
      join(dir, 'prometheus.yml'),
      stringify({
        global: { scrape_interval: '1s', evaluation_interval: '1s' },
        scrape_configs: [
          {
            job_name: 'gpugate-dataplane',
            static_configs: [
              {
                targets: [new URL(plane.adminUrl).host],
                labels: { namespace: NAMESPACE, pod: 'dataplane-0' },
              },
            ],
          },
          { job_name: 'model-servers', static_configs: [{ targets: sims.map((x) => new URL(x.url).host) }] },
          {
            job_name: 'gpugate-operator',
            static_configs: [
              { targets: [new URL(operator.url).host], labels: { namespace: NAMESPACE, pod: 'operator-0' } },
            ],
          },
        ],
      }),
    );
    prometheus = spawn(
      'prometheus',
      [
        `--config.file=${join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
      ],
      { stdio: 'ignore' },
    );
    for (let i = 0; ; i++) {
      const ready = await fetch(`${promUrl}/-/ready`).then(
        (r) => r.ok,
        () => false,
      );
      if (ready) break;
      if (i > 100) throw new Error('prometheus did not become ready');
      await new Promise((r) => setTimeout(r, 100));
    }

    // Traffic for ~10 s, so rate() windows see several scrapes.
    const send = (key: string, model: string): Promise<number> =>
      fetch(`${plane.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: chat(model, { max_tokens: 8 }),
      }).then(async (r) => {
        await r.arrayBuffer();
        return r.status;
      });
    const statuses = new Map<number, number>();
    const end = Date.now() + 10_000;
    // A few bad keys only: failed authentications soon block the client address (429 for every request).
    for (let i = 0; i < 3; i++)
      statuses.set(
        401,
        (statuses.get(401) ?? 0) + ((await send('gpg_not-a-key', 'sim-llama-8b')) === 401 ? 1 : 0),
      );
    while (Date.now() < end) {
      const batch = await Promise.all([
        send(research.secret, 'sim-llama-8b'),
        send(research.secret, 'sim-llama-8b'),
        send(research.secret, 'broken-model'),
        ...Array.from({ length: 4 }, () => send(research.secret, 'tight-model')),
        send(trial.secret, 'sim-llama-8b'),
        send(trial.secret, 'tight-model'),
        send(limited.secret, 'sim-llama-8b'),
      ]);
      for (const st of batch) statuses.set(st, (statuses.get(st) ?? 0) + 1);
    }
    // 200s, refusals (401, 403, 429) and failures (5xx) all happened.
    for (const st of [200, 401, 403, 429])
      expect(statuses.get(st) ?? 0, `status ${st} in ${JSON.stringify([...statuses])}`).toBeGreaterThan(0);
    expect([...statuses.keys()].some((st) => st >= 500)).toBe(true);
    await new Promise((r) => setTimeout(r, 2_500)); // two more scrapes
  }, 240_000);

  afterAll(async () => {
    prometheus?.kill('SIGTERM');
    await operator?.kill();
    await plane?.close({ drainMs: 0 });
    await quota?.close();
    await writer?.flushAndClose();
    await Promise.all(sims.map((x) => x.close()));
    await pool?.end();
  });

  it('has the variables of namespace, tenant and backend answered by label values', async () => {
    for (const d of dashboards) {
      for (const v of d.templating.list.filter((x) => x.type === 'query')) {
        const q = (v.query as { query: string }).query;
        const m = /^label_values\((.*), (\w+)\)$/.exec(q);
        expect(m, `${d.title} $${v.name}: ${q}`).not.toBeNull();
        const res = await fetch(
          `${promUrl}/api/v1/label/${m![2]}/values?match[]=${encodeURIComponent(substitute(m![1]!))}`,
        );
        const values = ((await res.json()) as { data: string[] }).data;
        expect(
          values.filter((x) => x !== ''),
          `${d.title} $${v.name}`,
        ).not.toHaveLength(0);
      }
    }
  });

  it("exports the operator's quota gauges for a Tenant with a quota: credits, and what its usage rows leave", async () => {
    const left = await query(
      `gpugate_operator_tenant_quota_remaining_credits{tenant="${operatorTenant}"} / gpugate_operator_tenant_quota_credits{tenant="${operatorTenant}"}`,
    );
    expect(left).toMatchObject([{ value: [expect.any(Number), '0.75'] }]);
  });

  it('answers every query of every dashboard panel with data (except the listed pending panels)', async () => {
    const empty: string[] = [];
    const pendingWithData: string[] = [];
    let asked = 0;
    for (const d of dashboards) {
      for (const p of d.panels.filter((x) => x.type !== 'row')) {
        for (const t of p.targets ?? []) {
          const whole = `${d.title} :: ${p.title}`;
          const key = PENDING[whole] !== undefined ? whole : `${whole} [${t.refId}]`;
          asked++;
          const result = await query(substitute(t.expr));
          if (PENDING[key] !== undefined) {
            if (result.length > 0) pendingWithData.push(`${key} [${t.refId}]`);
          } else if (result.length === 0) empty.push(`${key} [${t.refId}]: ${t.expr}`);
        }
      }
    }
    expect(asked).toBeGreaterThan(50);
    expect(empty, 'panels without data').toEqual([]);
    expect(pendingWithData, 'panels listed as pending that now have data: remove them from PENDING').toEqual(
      [],
    );
  });
});
