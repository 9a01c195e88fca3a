// The operator's merged fleet view (GET /fleet on the operator's port, the same server operator/main.ts
// starts) over real data-plane processes: three replicas, one on an old revision, a GPU simulator killed
// under traffic (ejected with its reason on the replica that saw the failures, healthy on the others),
// one target that does not answer; `gpugate status --operator-url` renders it and `status tenant` renders
// a tenant's per-replica table. Then two gpugate data planes chained behind a third: the chain is
// followed to the inner gateway's admin API with the configured token, and the one whose admin API
// cannot be reached is named. No cluster: the operator's target list (EndpointSlices) is replaced by the
// processes' admin URLs, which is what --dataplane-url gives it too.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Snapshot } from '../../dataplane/config/snapshot.ts';
import type { FleetStatus, TenantFleet } from '../../operator/aggregate/aggregate.ts';
import { renderTenant } from '../../operator/aggregate/render.ts';
import type { FleetSource } from '../../operator/aggregate/routes.ts';
import { EXIT } from '../../operator/cli/command.ts';
import { startOperatorServer } from '../../operator/server.ts';
import { startSimulator, type Simulator } from '../fixtures/gpusim/index.ts';
import { startDataPlaneProcess, startProcess, type DataPlaneProcess } from '../fixtures/processes.ts';
import { apiKey, backend, snapshot, tenant } from './harness.ts';
import { runCliCaptured } from '../fixtures/cli.ts';

const TOKEN = 'fleet-push-token';
const DEAD_ADMIN = 'http://127.0.0.1:9';

const sim = (name: string) =>
  startSimulator({ host: '127.0.0.1', port: 0, name, models: ['m'], decodeMsPerToken: 1 });

async function chat(url: string, key: string): Promise<number> {
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
  });
  await res.body.dump();
  return res.statusCode;
}

async function getJson(url: string, token?: string): Promise<{ status: number; body: unknown }> {
  const res = await request(url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: res.statusCode, body: await res.body.json() };
}

const gpugate = (...argv: string[]) => runCliCaptured(argv);

interface Operator {
  url: string;
  close(): Promise<void>;
}

/** The operator's HTTP server with a fleet source over these admin URLs (and chained gateways). */
async function startOperatorPort(
  targets: { url: string; name: string }[],
  revision: string,
  chains: FleetSource['chains'] = () => ({}),
): Promise<Operator> {
  const { server, url } = await startOperatorServer(
    {
      registry: new Registry(),
      snapshot: () => null,
      token: () => TOKEN,
      ready: () => true,
      isLeader: () => true,
      fleet: {
        targets: () => targets.map((t) => ({ ...t, expectedRevision: revision })),
        revision: () => revision,
        token: () => TOKEN,
        chains,
      },
    },
    '127.0.0.1',
    0,
  );
  return { url, close: () => new Promise((r) => server.close(() => r())) };
}

describe('the operator’s fleet view over data-plane processes', () => {
  let dir: string;
  let simA: Simulator;
  let simB: Simulator;
  let planes: DataPlaneProcess[] = [];
  let op: Operator;
  let current: Snapshot;
  let old: Snapshot;
  let fleet: FleetStatus;
  const key = apiKey('team/acme');
  /** Requests dp-1 admitted in beforeAll, and when the first was sent (its bucket was full then). */
  let dp1Sent = 0;
  let dp1FirstAt = 0;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gpugate-fleet-'));
    [simA, simB] = await Promise.all([sim('a'), sim('b')]);
    const parts = {
      backends: [backend('gpu/llama', [simA.url, simB.url], { models: ['m'] })],
      keys: [key.key],
    };
    current = snapshot({
      ...parts,
      tenants: [tenant('team/acme', { limits: { requestsPerMinute: 600, concurrentRequests: 8 } })],
      settings: { replicas: 2 },
    });
    old = snapshot({
      ...parts,
      tenants: [tenant('team/acme', { limits: { requestsPerMinute: 60 } })],
      settings: { replicas: 2 },
    });
    writeFileSync(join(dir, 'current.json'), JSON.stringify(current));
    writeFileSync(join(dir, 'old.json'), JSON.stringify(old));
    const file = (f: string) => ['--snapshot', join(dir, f)];
    planes = await Promise.all(
      [
        ['dp-1', 'current.json'],
        ['dp-2', 'current.json'],
        ['dp-old', 'old.json'],
      ].map(([id, f]) => startDataPlaneProcess({ token: TOKEN, args: ['--instance-id', id!, ...file(f!)] })),
    );
    op = await startOperatorPort(
      [
        ...planes.map((p, i) => ({ url: p.adminUrl, name: ['dp-1', 'dp-2', 'dp-old'][i]! })),
        { url: DEAD_ADMIN, name: 'dp-gone' },
      ],
      current.revision,
    );
    // The simulator behind ep1 dies; traffic through dp-1 fails over to ep0 and ejects ep1 there (5
    // consecutive failures, 5 s at first). The view is read right after each burst, so the ejection is
    // seen however slow the machine is; bounded to 20 bursts.
    await simB.close();
    dp1FirstAt = performance.now();
    for (let burst = 0; burst < 20; burst++) {
      for (let i = 0; i < 12; i++) {
        expect(await chat(planes[0]!.url, key.secret)).toBe(200);
        dp1Sent++;
      }
      const got = await getJson(`${op.url}/fleet`, TOKEN);
      expect(got.status).toBe(200);
      fleet = got.body as FleetStatus;
      if (fleet.backends[0]?.endpoints[1]?.states['dp-1']?.state === 'ejected') break;
    }
  });
  afterAll(async () => {
    await op?.close();
    await Promise.all(planes.map((p) => p.kill()));
    await simA?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('needs the push token', async () => {
    const res = await getJson(`${op.url}/fleet`);
    expect(res.status).toBe(401);
    expect(await getJson(`${op.url}/fleet`, 'wrong')).toMatchObject({ status: 401 });
  });

  it('shows the killed simulator ejected with its reason on the replica that saw it fail', () => {
    const ep1 = fleet.backends[0]!.endpoints[1]!;
    expect(ep1.url).toBe(simB.url);
    expect(ep1.states['dp-1']?.state).toBe('ejected');
    expect(ep1.states['dp-1']?.reason).toMatch(
      /^outlier ejection #\d+ after consecutive failures; last: connect/,
    );
    expect(ep1.states['dp-2']?.state).toBe('healthy');
    expect(fleet.backends[0]!.endpoints[0]!.states['dp-1']?.state).toBe('healthy');
  });

  it('flags the old revision, the split endpoint and the unreachable replica', () => {
    expect(fleet.expectedRevision).toBe(current.revision);
    const byKind = (k: string) => fleet.disagreements.filter((d) => d.kind === k);
    expect(byKind('revision')).toEqual([
      { kind: 'revision', target: 'dp-old', revision: old.revision, expected: current.revision },
    ]);
    expect(byKind('unreachable')).toEqual([
      { kind: 'unreachable', target: 'dp-gone', error: expect.stringMatching(/fetch failed|ECONNREFUSED/) },
    ]);
    expect(byKind('endpoint_state')).toEqual([
      {
        kind: 'endpoint_state',
        backend: 'gpu/llama',
        endpoint: 'ep1',
        states: { 'dp-1': 'ejected', 'dp-2': 'healthy', 'dp-old': 'healthy' },
      },
    ]);
    const replica = (t: string) => fleet.replicas.find((r) => r.target === t)!;
    expect(replica('dp-1')).toMatchObject({
      reachable: true,
      replica: 'dp-1',
      revision: current.revision,
      features: { metering: false, quota: false, accessLog: true, tracing: false },
    });
    expect(replica('dp-old')).toMatchObject({ reachable: true, revision: old.revision });
    expect(replica('dp-gone')).toMatchObject({ reachable: false, revision: null });
  });

  it('gpugate status --operator-url renders the operator’s view', async () => {
    const out = await gpugate('status', '--operator-url', op.url, '--admin-token', TOKEN);
    expect(out.stderr).toBe('');
    expect(out.code).toBe(EXIT.ok);
    const lines = out.stdout.split('\n');
    expect(lines[0]).toMatch(/^REPLICA +REVISION +VERSION +SNAPSHOT AGE +STATE$/);
    expect(lines.find((l) => l.startsWith('dp-old '))).toMatch(/ old revision$/);
    expect(lines.find((l) => l.startsWith('dp-1 '))).toMatch(/ ok$/);
    expect(lines.find((l) => l.startsWith('dp-gone '))).toMatch(/ unreachable: /);
    expect(lines.find((l) => l.includes(simB.url))).toMatch(
      /^gpu\/llama +ep1 +\S+ +dp-1=ejected dp-2=healthy dp-old=healthy$/,
    );
    expect(out.stdout).not.toContain('\u001b[');
    const json = await gpugate('status', '--operator-url', op.url, '--admin-token', TOKEN, '-o', 'json');
    expect((JSON.parse(json.stdout) as FleetStatus).disagreements).toHaveLength(3);
    const bad = await gpugate('status', '--operator-url', op.url, '--admin-token', 'nope');
    expect(bad.code).toBe(EXIT.failure);
    expect(bad.stderr).toBe(
      `gpugate: the operator at ${op.url} answered 401: GET /fleet needs the push token as a Bearer token\n`,
    );
  });

  it('gpugate status tenant renders limits, each replica’s buckets and the keys as a table', async () => {
    const out = await gpugate(
      'status',
      'tenant',
      'team/acme',
      '--operator-url',
      op.url,
      '--admin-token',
      TOKEN,
      '-o',
      'json',
    );
    expect(out.code).toBe(EXIT.ok);
    const t = JSON.parse(out.stdout) as TenantFleet;
    expect(t.replicas.map((r) => [r.target, r.reachable, r.view?.revision ?? null])).toEqual([
      ['dp-1', true, current.revision],
      ['dp-2', true, current.revision],
      ['dp-old', true, old.revision],
      ['dp-gone', false, null],
    ]);
    // dp-1 served the traffic: its request bucket exists at its share (600/min over 2 replicas), lost
    // what dp-1 admitted and got back at most 5 a second since (a bound from the time this took, not
    // 'below 300', which a slow machine reaches in 200 ms per request).
    const elapsedMs = performance.now() - dp1FirstAt;
    const dp1 = t.replicas[0]!.view!.limits.replica!;
    expect(dp1.requests!.limitPerMinute).toBe(300);
    expect(dp1Sent).toBeGreaterThanOrEqual(12);
    expect(dp1.requests!.remaining).toBeGreaterThanOrEqual(300 - dp1Sent);
    expect(dp1.requests!.remaining).toBeLessThanOrEqual(
      Math.min(300, 300 - dp1Sent + (elapsedMs * 300) / 60_000),
    );
    expect(t.replicas[1]!.view!.limits.replica).toBeNull();
    // The bucket level refills with time: fix it so the text is a known state, then compare all of it.
    dp1.requests!.remaining = 287.6;
    const gone = t.replicas[3]!;
    gone.error = 'fetch failed';
    expect(renderTenant(t, { color: false })).toBe(
      [
        'TENANT     team/acme',
        'SUSPENDED  no',
        'LIMITS     requests/min 600, tokens/min -, concurrent 8',
        'QUOTA      none',
        '',
        'REPLICA  REVISION      REQUESTS LEFT  TOKENS LEFT  CONCURRENT  LEASED  STATE',
        `dp-1     ${current.revision.slice(0, 12)}  287/300        -            0/4         -       ok`,
        `dp-2     ${current.revision.slice(0, 12)}  -              -            -           -       ok`,
        `dp-old   ${old.revision.slice(0, 12)}  -              -            -           -       ok`,
        'dp-gone  -             -              -            -           -       unreachable: fetch failed',
        '',
        'KEY PREFIX    ID                          STATE   EXPIRES',
        `${key.key.prefix}  ${key.key.id}  active  never`,
      ].join('\n'),
    );
    const text = await gpugate(
      'status',
      'tenant',
      'team/acme',
      '--operator-url',
      op.url,
      '--admin-token',
      TOKEN,
    );
    expect(text.stdout).toContain('LIMITS     requests/min 600, tokens/min -, concurrent 8\n');
    expect(text.stdout).not.toContain(key.secret);
  });

  it('says which tenant is unknown, and refuses a malformed name', async () => {
    const unknown = await gpugate(
      'status',
      'tenant',
      'team/nobody',
      '--operator-url',
      op.url,
      '--admin-token',
      TOKEN,
    );
    expect(unknown.code).toBe(EXIT.notFound);
    expect(unknown.stderr).toBe(
      'gpugate: no data plane knows tenant team/nobody: dp-1 answered 404: no tenant team/nobody in the snapshot\n',
    );
    const res = await getJson(`${op.url}/fleet/tenants/Team/x`, TOKEN);
    expect(res.status).toBe(400);
    expect((res.body as { error: string }).error).toContain('"Team"');
    const badEncoding = await getJson(`${op.url}/fleet/tenants/%ZZ/x`, TOKEN);
    expect(badEncoding).toEqual({
      status: 400,
      body: { error: 'the tenant path is not valid percent-encoding' },
    });
    const usage = await gpugate(
      'status',
      'tenant',
      'Bad_Name/x',
      '--operator-url',
      op.url,
      '--admin-token',
      TOKEN,
    );
    expect(usage.code).toBe(EXIT.usage);
    expect(usage.stderr).toContain('"Bad_Name/x"');
  });
});

describe('gateway chains in the fleet view', () => {
  let model: Simulator;
  let inner: DataPlaneProcess;
  let unconfigured: DataPlaneProcess;
  let edge: DataPlaneProcess;
  let op: Operator;
  let dir: string;
  let edgeSnap: Snapshot;
  let innerSnap: Snapshot;
  const clientKey = apiKey('acme');
  const edgeKey = apiKey('edge');

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gpugate-chain-'));
    model = await sim('model');
    innerSnap = snapshot({
      backends: [backend('ns/model', [model.url], { models: ['m'] })],
      tenants: [tenant('edge')],
      keys: [edgeKey.key],
    });
    writeFileSync(join(dir, 'inner.json'), JSON.stringify(innerSnap));
    const innerPlane = (id: string) =>
      startDataPlaneProcess({
        token: TOKEN,
        args: ['--instance-id', id, '--snapshot', join(dir, 'inner.json')],
      });
    [inner, unconfigured] = await Promise.all([innerPlane('inner'), innerPlane('inner-2')]);
    edgeSnap = snapshot({
      backends: [
        backend('ns/regional', [inner.url, unconfigured.url], {
          models: ['m'],
          upstreamAuth: { header: 'authorization', value: `Bearer ${edgeKey.secret}` },
        }),
      ],
      tenants: [tenant('acme')],
      keys: [clientKey.key],
    });
    writeFileSync(join(dir, 'edge.json'), JSON.stringify(edgeSnap));
    edge = await startDataPlaneProcess({
      token: TOKEN,
      args: ['--instance-id', 'edge', '--snapshot', join(dir, 'edge.json')],
    });
    // Two requests: round robin sends one through each inner gateway, and the edge learns both are gpugate.
    for (let i = 0; i < 2; i++) expect(await chat(edge.url, clientKey.secret)).toBe(200);
    op = await startOperatorPort([{ url: edge.adminUrl, name: 'edge' }], edgeSnap.revision, () => ({
      [inner.url]: { adminUrl: inner.adminUrl, token: TOKEN },
    }));
  });
  afterAll(async () => {
    await op?.close();
    await Promise.all([edge, inner, unconfigured].map((p) => p?.kill()));
    await model?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('follows a chained gpugate to its admin API and names the one it cannot read', async () => {
    const got = await getJson(`${op.url}/fleet`, TOKEN);
    expect(got.status).toBe(200);
    const fleet = got.body as FleetStatus;
    const [ep0, ep1] = fleet.backends[0]!.endpoints;
    expect(ep0).toMatchObject({ url: inner.url, gateway: true });
    expect(ep0!.chain).toMatchObject({
      adminUrl: inner.adminUrl,
      reachable: true,
      error: null,
      replica: 'inner',
      revision: innerSnap.revision,
    });
    expect(ep0!.chain!.backends.map((b) => [b.id, b.endpoints.map((e) => [e.url, e.state])])).toEqual([
      ['ns/model', [[model.url, 'healthy']]],
    ]);
    expect(ep1).toMatchObject({ url: unconfigured.url, gateway: true });
    expect(ep1!.chain).toMatchObject({
      adminUrl: null,
      reachable: false,
      error: 'no admin URL configured for this gateway',
    });
    const out = await gpugate('status', '--operator-url', op.url, '--admin-token', TOKEN);
    expect(out.stdout).toContain(`  > ns/model`);
    expect(out.stdout.split('\n').find((l) => l.includes(unconfigured.url))).toMatch(
      /healthy on 1 \(gateway: no admin URL configured for this gateway\)$/,
    );
  });

  it('names a chained gateway whose admin API refuses the token', async () => {
    const wrong = await startOperatorPort([{ url: edge.adminUrl, name: 'edge' }], edgeSnap.revision, () => ({
      [inner.url]: { adminUrl: inner.adminUrl, token: 'not-the-inner-token' },
      [new URL(unconfigured.url).origin]: { adminUrl: DEAD_ADMIN, token: TOKEN },
    }));
    try {
      const fleet = (await getJson(`${wrong.url}/fleet`, TOKEN)).body as FleetStatus;
      const [ep0, ep1] = fleet.backends[0]!.endpoints;
      expect(ep0!.chain).toMatchObject({
        reachable: false,
        error: expect.stringMatching(/\/admin\/(info|backends) answered 401$/),
        backends: [],
      });
      expect(ep1!.chain).toMatchObject({ adminUrl: DEAD_ADMIN, reachable: false });
      expect(ep1!.chain!.error).toMatch(/fetch failed/);
    } finally {
      await wrong.close();
    }
  });
});

describe('operator/main.ts flags checked at start', () => {
  it.each([
    [
      ['--gateway-admin', 'gw:8080=http://gw:9090'],
      '--gateway-admin "gw:8080=http://gw:9090": the endpoint "gw:8080" is not an http(s) URL; use ENDPOINT_URL=ADMIN_URL, e.g. http://gw.example:8080=http://gw.example:9090',
    ],
    [
      ['--gateway-admin-token-file', '/nonexistent/gpugate-token'],
      "--gateway-admin-token-file /nonexistent/gpugate-token cannot be read: ENOENT: no such file or directory, open '/nonexistent/gpugate-token'",
    ],
    [
      ['--trusted-proxies', '10.244.0.0/16,ingress-nginx'],
      '--trusted-proxies: "ingress-nginx" is not an IPv4 or IPv6 CIDR (allowed: comma-separated CIDRs or addresses)',
    ],
  ])('refuses %j at start, naming it', async (args, message) => {
    // The flags are checked before the operator talks to any API server (this one does not exist).
    const dir = mkdtempSync(join(tmpdir(), 'gpugate-op-flags-'));
    const kubeconfig = join(dir, 'kubeconfig');
    writeFileSync(
      kubeconfig,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]',
        'users: [{name: u, user: {token: t}}]',
        'contexts: [{name: x, context: {cluster: c, user: u}}]',
        'current-context: x',
      ].join('\n'),
    );
    const p = startProcess('operator/main.ts', ['--push-token-secret', 'ns/push-token', ...args], {
      KUBECONFIG: kubeconfig,
    });
    try {
      expect(await p.exited).toBe(2);
      const fatal = p
        .log()
        .split('\n')
        .find((l) => l.includes('"level":60'));
      expect(JSON.parse(fatal!).msg).toBe(message);
    } finally {
      await p.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
