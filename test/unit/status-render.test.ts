// The status tables for states the process tests cannot reach cheaply: a tenant whose quota balance was
// read from the usage database (and one whose read failed), a replica that answered with an error, a
// disabled key, and colour on a terminal; plus the chained gateway rows of the fleet table.
import { describe, expect, it } from 'vitest';
import type { FleetStatus, TenantFleet, TenantViewDoc } from '../../operator/aggregate/aggregate.ts';
import { parseChainSpecs } from '../../operator/aggregate/aggregate.ts';
import { renderStatus, renderTenant } from '../../operator/aggregate/render.ts';

const REV = 'a'.repeat(64);

function view(over: Partial<TenantViewDoc> = {}): TenantViewDoc {
  return {
    replica: 'r1',
    revision: REV,
    tenant: 'team/acme',
    suspended: false,
    limits: {
      configured: { requestsPerMinute: null, tokensPerMinute: 60_000, concurrentRequests: null },
      replica: {
        requests: null,
        tokens: { limitPerMinute: 30_000, remaining: 29_123.75, msUntilFull: 1_754 },
        concurrent: { limit: 0, inflight: 0 },
      },
    },
    quota: {
      credits: 1000,
      period: 'Monthly',
      leasedHere: 12.5,
      balance: {
        kind: 'tenant',
        id: 'team/acme',
        period: 'Monthly',
        periodStart: '2026-11-01T00:00:00.000Z',
        periodEnd: '2026-12-01T00:00:00.000Z',
        limit: 1000,
        spent: 240.25,
        toppedUp: 500,
        reserved: 12.5,
        available: 1247.25,
        remaining: 1259.75,
      },
      balanceError: null,
    },
    keys: [
      { id: 'team/acme-ci', prefix: 'gpg_Ab12Cd34', disabled: false, expiresAt: '2027-01-01T00:00:00Z' },
      { id: 'team/acme-old', prefix: 'gpg_Zz99Yy88', disabled: true, expiresAt: null },
    ],
    ...over,
  };
}

describe('gpugate status tenant table', () => {
  const fleet: TenantFleet = {
    at: '2026-11-21T08:00:00.000Z',
    tenant: 'team/acme',
    replicas: [
      { target: '10.0.0.5:9090', reachable: true, error: null, view: view() },
      { target: '10.0.0.6:9090', reachable: true, error: 'answered 401: bad token', view: null },
      { target: '10.0.0.7:9090', reachable: false, error: 'fetch failed', view: null },
    ],
  };

  it('renders the balance read from the database, each replica, and the keys (compared as text)', () => {
    expect(renderTenant(fleet, { color: false })).toBe(
      [
        'TENANT     team/acme',
        'SUSPENDED  no',
        'LIMITS     requests/min -, tokens/min 60000, concurrent -',
        'QUOTA      1259.75 of 1500 credits left (Monthly; spent 240.25, 12.5 held in leases)',
        '',
        'REPLICA        REVISION      REQUESTS LEFT  TOKENS LEFT  CONCURRENT  LEASED  STATE',
        '10.0.0.5:9090  aaaaaaaaaaaa  -              29123/30000  -           12.5    ok',
        '10.0.0.6:9090  -             -              -            -           -       answered 401: bad token',
        '10.0.0.7:9090  -             -              -            -           -       unreachable: fetch failed',
        '',
        'KEY PREFIX    ID             STATE     EXPIRES',
        'gpg_Ab12Cd34  team/acme-ci   active    2027-01-01T00:00:00Z',
        'gpg_Zz99Yy88  team/acme-old  disabled  never',
      ].join('\n'),
    );
  });

  it('says why the balance is missing, and colours states only when asked', () => {
    const failed: TenantFleet = {
      ...fleet,
      replicas: [
        {
          ...fleet.replicas[0]!,
          view: view({
            quota: {
              credits: 1000,
              period: 'Monthly',
              leasedHere: null,
              balance: null,
              balanceError: 'connect ECONNREFUSED',
            },
          }),
        },
      ],
    };
    const text = renderTenant(failed, { color: false });
    expect(text).toContain('QUOTA      1000 credits Monthly; balance unreadable: connect ECONNREFUSED\n');
    expect(text).not.toContain('\u001b[');
    const coloured = renderTenant(fleet, { color: true });
    expect(coloured).toContain('\u001b[32mok\u001b[0m');
    expect(coloured).toContain('\u001b[31munreachable: fetch failed\u001b[0m');
    expect(coloured).toContain('\u001b[31mdisabled\u001b[0m');
  });
});

describe('gpugate status fleet table with a chained gateway', () => {
  it('lists the chained gateway’s endpoints under the gateway endpoint, and says why one could not be read', () => {
    const fleet: FleetStatus = {
      at: '2026-11-21T08:00:00.000Z',
      expectedRevision: REV,
      replicas: [
        {
          target: 'edge',
          reachable: true,
          error: null,
          replica: 'edge',
          version: '0.1.0',
          revision: REV,
          expectedRevision: REV,
          snapshotAgeMs: 12_000,
          uptimeMs: 60_000,
          features: null,
        },
      ],
      backends: [
        {
          id: 'ns/regional',
          policy: 'RoundRobin',
          endpoints: [
            {
              id: 'ep0',
              url: 'http://gw-a:8080',
              source: 'static',
              gateway: true,
              states: { edge: { state: 'healthy', reason: null, inflight: 0 } },
              chain: {
                adminUrl: 'http://gw-a:9090',
                reachable: true,
                error: null,
                replica: 'gw-a',
                version: '0.1.0',
                revision: 'b'.repeat(64),
                backends: [
                  {
                    id: 'ns/model',
                    policy: 'LeastRequest',
                    queued: 0,
                    panicking: false,
                    healthy: 1,
                    total: 2,
                    endpoints: [
                      {
                        id: 'ep0',
                        url: 'http://gpu-0:8000',
                        source: 'pod',
                        weight: 1,
                        state: 'healthy',
                        reason: null,
                        ejectedForMs: 0,
                        ejections: 0,
                        lastFailure: null,
                        inflight: 2,
                        gateway: false,
                        load: null,
                      },
                      {
                        id: 'ep1',
                        url: 'http://gpu-1:8000',
                        source: 'pod',
                        weight: 1,
                        state: 'failing_checks',
                        reason: 'active health check failed 3 times in a row',
                        ejectedForMs: 0,
                        ejections: 0,
                        lastFailure: null,
                        inflight: 0,
                        gateway: false,
                        load: null,
                      },
                    ],
                  },
                ],
              },
            },
            {
              id: 'ep1',
              url: 'http://gw-b:8080',
              source: 'static',
              gateway: true,
              states: { edge: { state: 'healthy', reason: null, inflight: 0 } },
              chain: {
                adminUrl: 'http://gw-b:9090',
                reachable: false,
                error: 'http://gw-b:9090/admin/info answered 401',
                replica: null,
                version: null,
                revision: null,
                backends: [],
              },
            },
          ],
        },
      ],
      disagreements: [],
    };
    expect(renderStatus(fleet, { color: false }).split('\n').slice(3)).toEqual([
      'BACKEND       ENDPOINT  URL                STATE',
      'ns/regional   ep0       http://gw-a:8080   healthy on 1 (gateway bbbbbbbbbbbb)',
      '  > ns/model  ep0       http://gpu-0:8000  healthy',
      '  > ns/model  ep1       http://gpu-1:8000  failing_checks (active health check failed 3 times in a row)',
      'ns/regional   ep1       http://gw-b:8080   healthy on 1 (gateway: http://gw-b:9090/admin/info answered 401)',
    ]);
  });
});

describe('--gateway-admin values', () => {
  it('maps an endpoint URL to its admin API and refuses anything else naming the value', () => {
    expect(parseChainSpecs('--gateway-admin', ['http://gw:8080/=http://gw:9090/'], 't')).toEqual({
      'http://gw:8080': { adminUrl: 'http://gw:9090', token: 't' },
    });
    expect(() => parseChainSpecs('--gateway-admin', ['http://gw:8080'], 't')).toThrow(
      '--gateway-admin "http://gw:8080": the admin URL "" is not an http(s) URL; use ENDPOINT_URL=ADMIN_URL, e.g. http://gw.example:8080=http://gw.example:9090',
    );
    expect(() => parseChainSpecs('--gateway-admin', ['gw:8080=http://gw:9090'], 't')).toThrow(
      'the endpoint "gw:8080" is not an http(s) URL',
    );
  });
});
