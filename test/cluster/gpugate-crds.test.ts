// gpugate's CRDs on the real API server: every CEL rule (and a few OpenAPI rules) with a valid and an
// invalid fixture, checked against the server's own message; and every manifest in examples/ accepted.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { kubectl, newNamespace } from './harness.ts';
import { installCrds } from './operator-helpers.ts';

const repo = join(import.meta.dirname, '..', '..');
const api = 'gpugate.io/v1alpha1';

type Obj = Record<string, unknown>;
const gb = (spec: Obj): Obj => ({ apiVersion: api, kind: 'GpuBackend', metadata: { name: 'fixture' }, spec });
const tn = (spec: Obj): Obj => ({ apiVersion: api, kind: 'Tenant', metadata: { name: 'fixture' }, spec });
const ak = (spec: Obj): Obj => ({ apiVersion: api, kind: 'ApiKey', metadata: { name: 'fixture' }, spec });
const ep = [{ url: 'http://10.0.0.1:8000' }];

interface Fixture {
  rule: string;
  valid: Obj;
  invalid: Obj;
  /** The API server's message must contain this. */
  message: string;
}

const fixtures: Fixture[] = [
  {
    rule: 'GpuBackend needs endpoints, deployment or registration',
    valid: gb({ endpoints: ep }),
    invalid: gb({ models: ['llama'] }),
    message: 'a GpuBackend needs at least one of endpoints, deployment or registration',
  },
  {
    rule: "'*' is not combined with model names",
    valid: gb({ endpoints: ep, models: ['*'] }),
    invalid: gb({ endpoints: ep, models: ['*', 'llama'] }),
    message: "spec.models: Invalid value: '*' serves every model and cannot be combined with model names",
  },
  {
    rule: 'endpoint URLs are http or https',
    valid: gb({ endpoints: [{ url: 'https://gpu.example.com' }] }),
    invalid: gb({ endpoints: [{ url: 'ftp://gpu.example.com' }] }),
    message: 'must be an http:// or https:// URL, got ftp://gpu.example.com',
  },
  {
    rule: 'weights are positive',
    valid: gb({ endpoints: [{ url: 'http://a:1', weight: 5 }] }),
    invalid: gb({ endpoints: [{ url: 'http://a:1', weight: 0 }] }),
    message:
      'spec.endpoints[0].weight: Invalid value: 0: spec.endpoints[0].weight in body should be greater than or equal to 1',
  },
  {
    rule: 'endpoint URLs are unique',
    valid: gb({ endpoints: [{ url: 'http://a:1' }, { url: 'http://b:1' }] }),
    invalid: gb({ endpoints: [{ url: 'http://a:1' }, { url: 'http://a:1' }] }),
    message: 'spec.endpoints[1]: Duplicate value: {"url":"http://a:1"}',
  },
  {
    rule: 'connect timeout within total',
    valid: gb({ endpoints: ep, timeouts: { connect: '2s', total: '5m' } }),
    invalid: gb({ endpoints: ep, timeouts: { connect: '10m', total: '5m' } }),
    message: 'connect must not be longer than total',
  },
  {
    rule: 'first-byte timeout within total',
    valid: gb({ endpoints: ep, timeouts: { firstByte: '1m', total: '5m' } }),
    invalid: gb({ endpoints: ep, timeouts: { firstByte: '1h', total: '5m' } }),
    message: 'firstByte must not be longer than total',
  },
  {
    rule: 'durations are Go-style',
    valid: gb({ endpoints: ep, balancing: { queueTimeout: '1m30s' } }),
    invalid: gb({ endpoints: ep, balancing: { queueTimeout: '30 seconds' } }),
    message:
      'spec.balancing.queueTimeout: Invalid value: "30 seconds": must be a duration such as 500ms, 30s, 5m or 1h30m',
  },
  {
    rule: 'balancing policy is one of the three',
    valid: gb({ endpoints: ep, balancing: { policy: 'QueueAware' } }),
    invalid: gb({ endpoints: ep, balancing: { policy: 'Random' } }),
    message:
      'spec.balancing.policy: Unsupported value: "Random": supported values: "RoundRobin", "LeastRequest", "QueueAware"',
  },
  {
    rule: 'env takes a value or a Secret key, not both',
    valid: gb({ deployment: { image: 'vllm/vllm-openai', env: [{ name: 'A', value: '1' }] } }),
    invalid: gb({
      deployment: {
        image: 'vllm/vllm-openai',
        env: [{ name: 'A', value: '1', secretKeyRef: { name: 's' } }],
      },
    }),
    message: 'set exactly one of value or secretKeyRef',
  },
  {
    rule: 'JWT verification by exactly one of JWKS or HS secret',
    valid: tn({ jwt: { issuer: 'https://idp', jwksUrl: 'https://idp/jwks' } }),
    invalid: tn({ jwt: { issuer: 'https://idp', jwksUrl: 'https://idp/jwks', hsSecretRef: { name: 's' } } }),
    message: 'set exactly one of jwksUrl or hsSecretRef',
  },
  {
    rule: 'JWKS URL is http or https',
    valid: tn({ jwt: { issuer: 'https://idp', jwksUrl: 'http://idp.local/jwks' } }),
    invalid: tn({ jwt: { issuer: 'https://idp', jwksUrl: 'file:///etc/jwks' } }),
    message: 'must be an http:// or https:// URL, got file:///etc/jwks',
  },
  {
    rule: 'quota period is None, Daily or Monthly',
    valid: tn({ quota: { credits: 10, period: 'Daily' } }),
    invalid: tn({ quota: { credits: 10, period: 'Weekly' } }),
    message: 'spec.quota.period: Unsupported value: "Weekly": supported values: "None", "Daily", "Monthly"',
  },
  {
    rule: 'allowedCIDRs are CIDRs',
    valid: ak({ tenant: 'acme', allowedCIDRs: ['10.0.0.0/8', '2001:db8::/32'] }),
    invalid: ak({ tenant: 'acme', allowedCIDRs: ['10.0.0.0/33'] }),
    message: "must be a CIDR such as 10.0.0.0/8 or one address such as 10.0.0.1, got '10.0.0.0/33'",
  },
];

/** Server-side dry-run create; resolves to '' when accepted, else the server's message. */
async function serverVerdict(ns: string, obj: Obj): Promise<string> {
  try {
    await kubectl(['create', '--dry-run=server', '-n', ns, '-f', '-'], { input: JSON.stringify(obj) });
    return '';
  } catch (err) {
    return (err as Error).message;
  }
}

describe('gpugate CRDs on the API server', () => {
  let ns = '';
  beforeAll(async () => {
    await installCrds();
    ns = await newNamespace('crds');
  });

  it.each(fixtures.map((f) => [f.rule, f]))('%s: valid fixture accepted', async (_rule, f) => {
    expect(await serverVerdict(ns, f.valid)).toBe('');
  });

  it.each(fixtures.map((f) => [f.rule, f]))(
    '%s: invalid fixture refused with the rule message',
    async (_rule, f) => {
      expect(await serverVerdict(ns, f.invalid)).toContain(f.message);
    },
  );

  it('an ApiKey cannot move to another tenant', async () => {
    await kubectl(['create', '-n', ns, '-f', '-'], {
      input: JSON.stringify({ ...ak({ tenant: 'acme' }), metadata: { name: 'immutable' } }),
    });
    const moved = JSON.stringify({ ...ak({ tenant: 'other' }), metadata: { name: 'immutable' } });
    await expect(
      kubectl(['apply', '--server-side', '--force-conflicts', '-n', ns, '-f', '-'], { input: moved }),
    ).rejects.toThrow('tenant is immutable; create a new ApiKey instead');
  });

  it('fills defaults on the server as the schema says', async () => {
    const out = await kubectl(['create', '--dry-run=server', '-n', ns, '-o', 'json', '-f', '-'], {
      input: JSON.stringify(gb({ endpoints: ep })),
    });
    const spec = (JSON.parse(out) as { spec: Obj }).spec;
    expect(spec).toMatchObject({ models: ['*'], protocol: 'openai', maxRequestBytes: 104857600 });
    expect(spec.endpoints).toEqual([{ url: 'http://10.0.0.1:8000', weight: 1, disabled: false }]);
  });

  it('kubectl get by short name and category prints the printer columns', async () => {
    await kubectl(['create', '-n', ns, '-f', '-'], {
      input: JSON.stringify({ ...gb({ endpoints: ep }), metadata: { name: 'cols' } }),
    });
    const table = await kubectl(['get', 'gb', '-n', ns]);
    expect(table.split('\n')[0]).toMatch(/^NAME\s+READY\s+ENDPOINTS\s+MODELS\s+AGE/);
    const all = await kubectl(['get', 'gpugate', '-n', ns]);
    expect(all).toContain('gpubackend.gpugate.io/cols');
  });

  const exampleFiles = ['', 'cluster'].flatMap((dir) =>
    readdirSync(join(repo, 'examples', dir))
      .filter((f) => f.endsWith('.yaml'))
      .map((f) => join(dir, f)),
  );

  it.each(exampleFiles)('examples/%s is accepted by the API server', async (file) => {
    const docs = parseAllDocuments(readFileSync(join(repo, 'examples', file), 'utf8')).map(
      (d) => d.toJS() as Obj,
    );
    for (const doc of docs) {
      // Examples name their own namespaces; dry-run them into this suite's.
      const metadata = { ...(doc.metadata as Obj) };
      delete metadata.namespace;
      expect(await serverVerdict(ns, { ...doc, metadata }), `${file} ${String(doc.kind)}`).toBe('');
    }
  });
});
