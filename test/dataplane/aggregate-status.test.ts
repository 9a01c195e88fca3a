// The fleet view across two data planes: a replica on an old revision is flagged, an endpoint ejected
// on one replica and healthy on the other is a disagreement, an unreachable target is named, a gateway
// endpoint without a configured admin URL says so, and the status table renders a known state.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import type { DataPlane } from '../../dataplane/server.ts';
import { aggregateFleet, type FleetStatus } from '../../operator/aggregate/aggregate.ts';
import { renderStatus } from '../../operator/aggregate/render.ts';
import {
  apiKey,
  backend,
  chat,
  snapshot,
  startPlane,
  startUpstream,
  tenant,
  type Upstream,
} from './harness.ts';

const TOKEN = 'push-token-for-tests';

describe('fleet status', () => {
  let up: Upstream;
  let a: DataPlane;
  let b: DataPlane;
  let fleet: FleetStatus;
  const key = apiKey('team/a');
  const DEAD = 'http://127.0.0.1:9';

  beforeAll(async () => {
    up = await startUpstream('live');
    a = await startPlane({ instanceId: 'a', outlier: { consecutiveFailures: 1, baseEjectionMs: 600_000 } });
    b = await startPlane({ instanceId: 'b' });
    const parts = { tenants: [tenant('team/a')], keys: [key.key] };
    const old = snapshot({ backends: [backend('gpu/llama', [up.url, DEAD])], ...parts });
    const current = snapshot({
      backends: [backend('gpu/llama', [up.url, DEAD])],
      ...parts,
      settings: { replicas: 2 },
    });
    expect(a.applySnapshot(current).accepted).toBe(true);
    expect(b.applySnapshot(old).accepted).toBe(true);
    for (let i = 0; i < 3; i++) {
      const res = await request(a.url + '/v1/chat/completions', {
        method: 'POST',
        headers: { authorization: `Bearer ${key.secret}`, 'content-type': 'application/json' },
        body: chat('m'),
      });
      await res.body.dump();
    }
    fleet = await aggregateFleet({
      targets: [
        { name: 'a', adminUrl: a.adminUrl, token: TOKEN },
        { name: 'b', adminUrl: b.adminUrl, token: TOKEN },
        { name: 'gone', adminUrl: 'http://127.0.0.1:9', token: TOKEN },
      ],
      expectedRevision: current.revision,
    });
  });
  afterAll(async () => {
    await a.close({ drainMs: 1000 });
    await b.close({ drainMs: 1000 });
    await up.close();
  });

  it('flags the old-revision replica, the split endpoint and the unreachable target', () => {
    const kinds = fleet.disagreements.map((d) => `${d.kind}:${'target' in d ? d.target : d.endpoint}`);
    expect(kinds.sort()).toEqual(['endpoint_state:ep1', 'revision:b', 'unreachable:gone']);
    const ep1 = fleet.backends[0]?.endpoints[1];
    expect(ep1?.states.a?.state).toBe('ejected');
    expect(ep1?.states.b?.state).toBe('healthy');
  });

  it('renders the known state as a plain table without colour', () => {
    const known: FleetStatus = {
      ...fleet,
      replicas: fleet.replicas.map((r) => ({
        ...r,
        version: '0.1.0',
        snapshotAgeMs: 3000,
        error: r.error && 'refused',
      })),
    };
    const rev = (t: string) => fleet.replicas.find((r) => r.target === t)?.revision?.slice(0, 12) ?? '';
    const exp = fleet.expectedRevision!.slice(0, 12);
    expect(renderStatus(known, { color: false })).toBe(
      [
        'REPLICA  REVISION      VERSION  SNAPSHOT AGE  STATE',
        `a        ${rev('a')}  0.1.0    3s            ok`,
        `b        ${rev('b')}  0.1.0    3s            old revision`,
        'gone     -             0.1.0    3s            unreachable: refused',
        '',
        'BACKEND    ENDPOINT  URL                     STATE',
        `gpu/llama  ep0       ${up.url.padEnd(up.url.length)}  healthy on 2`,
        `gpu/llama  ep1       ${DEAD.padEnd(up.url.length)}  a=ejected b=healthy`,
        '',
        '3 disagreement(s):',
        '  gone unreachable: ' +
          (fleet.disagreements.find((d) => d.kind === 'unreachable') as { error: string }).error,
        `  b serves ${rev('b')}, expected ${exp}`,
        '  gpu/llama ep1: a=ejected, b=healthy',
      ].join('\n'),
    );
  });
});
