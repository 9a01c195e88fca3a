// Realistic mistakes in GpuBackend, Tenant and ApiKey manifests, sent to the real API server of the
// cluster harness (server-side dry run, strict field validation: what `kubectl apply` does), and the
// server's exact answer for each. The same messages are the table in docs/crd-errors.md: the test fails
// when the server's message, this table or the doc drift apart. GPUGATE_UPDATE_DOCS=1 rewrites the doc's
// table from what the server answered (then review the diff and update MISTAKES to match).
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { kubectl, newNamespace } from './harness.ts';
import { installCrds } from './operator-helpers.ts';

const repo = join(import.meta.dirname, '..', '..');
const DOC = join(repo, 'docs', 'crd-errors.md');
const api = 'gpugate.io/v1alpha1';

type Obj = Record<string, unknown>;
const gb = (spec: Obj): Obj => ({ apiVersion: api, kind: 'GpuBackend', metadata: { name: 'fixture' }, spec });
const tn = (spec: Obj): Obj => ({ apiVersion: api, kind: 'Tenant', metadata: { name: 'fixture' }, spec });
const ak = (spec: Obj): Obj => ({ apiVersion: api, kind: 'ApiKey', metadata: { name: 'fixture' }, spec });
const ep = [{ url: 'http://10.0.0.1:8000' }];
const EXPIRY =
  'must be a date and time with a time zone (RFC 3339), such as 2030-01-31T23:59:59Z or 2030-01-31T18:00:00-05:00,';
const NOT_CHECKED =
  '<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation';

interface Mistake {
  mistake: string;
  /** The part of the manifest that is wrong, as YAML under `spec` (for the doc). */
  object: Obj;
  /** Every error line the API server prints, exactly (the `* ` bullets without the bullet). */
  messages: string[];
  /** Set when gpugate changed the message (or the rule) while building this table: what it said before. */
  before?: string;
}

const MISTAKES: Mistake[] = [
  {
    mistake: 'GpuBackend with nowhere to send traffic',
    object: gb({ models: ['llama'] }),
    messages: [
      'spec: Invalid value: a GpuBackend needs at least one of endpoints, deployment or registration',
    ],
  },
  {
    mistake: 'endpoint URL without a scheme',
    object: gb({ endpoints: [{ url: 'gpu-0:8000' }] }),
    messages: [
      'spec.endpoints[0].url: Invalid value: "gpu-0:8000": must be an http:// or https:// URL, got gpu-0:8000',
    ],
  },
  {
    mistake: 'endpoints as one string instead of a list',
    object: gb({ endpoints: 'http://10.0.0.1:8000' }),
    messages: [
      'spec.endpoints: Invalid value: "string": spec.endpoints in body must be of type array: "string"',
      NOT_CHECKED,
    ],
  },
  {
    mistake: 'weight as a word',
    object: gb({ endpoints: [{ url: 'http://a:1', weight: 'five' }] }),
    messages: [
      'spec.endpoints[0].weight: Invalid value: "string": spec.endpoints[0].weight in body must be of type integer: "string"',
      NOT_CHECKED,
    ],
  },
  {
    mistake: 'weight 0 to drain an endpoint (disabled is the field for that)',
    object: gb({ endpoints: [{ url: 'http://a:1', weight: 0 }] }),
    messages: [
      'spec.endpoints[0].weight: Invalid value: 0: spec.endpoints[0].weight in body should be greater than or equal to 1',
    ],
  },
  {
    mistake: 'the same endpoint listed twice',
    object: gb({ endpoints: [{ url: 'http://a:1' }, { url: 'http://a:1' }] }),
    messages: ['spec.endpoints[1]: Duplicate value: {"url":"http://a:1"}'],
  },
  {
    mistake: 'duration in words',
    object: gb({ endpoints: ep, timeouts: { total: '5 minutes' } }),
    messages: [
      `spec.timeouts.total: Invalid value: "5 minutes": must be a duration such as 500ms, 30s, 5m or 1h30m (a number and a unit: ms, s, m or h), got '5 minutes'`,
    ],
    before:
      "three errors: `spec.timeouts.total ... should match '^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$'` and twice `type conversion error from 'string' to 'google.protobuf.Duration' evaluating rule: connect (firstByte) must not be longer than total`",
  },
  {
    mistake: 'connect timeout longer than the total',
    object: gb({ endpoints: ep, timeouts: { connect: '10m', total: '5m' } }),
    messages: ['spec.timeouts: Invalid value: connect must not be longer than total'],
  },
  {
    mistake: 'body limit as a Kubernetes quantity',
    object: gb({ endpoints: ep, maxRequestBytes: '100Mi' }),
    messages: [
      'spec.maxRequestBytes: Invalid value: "string": spec.maxRequestBytes in body must be of type integer: "string"',
      NOT_CHECKED,
    ],
  },
  {
    mistake: 'negative body limit',
    object: gb({ endpoints: ep, maxRequestBytes: -1 }),
    messages: [
      'spec.maxRequestBytes: Invalid value: -1: spec.maxRequestBytes in body should be greater than or equal to 1',
    ],
  },
  {
    mistake: 'balancing policy in another spelling',
    object: gb({ endpoints: ep, balancing: { policy: 'round-robin' } }),
    messages: [
      'spec.balancing.policy: Unsupported value: "round-robin": supported values: "RoundRobin", "LeastRequest", "QueueAware"',
      NOT_CHECKED,
    ],
  },
  {
    mistake: 'protocol capitalised',
    object: gb({ endpoints: ep, protocol: 'OpenAI' }),
    messages: [
      'spec.protocol: Unsupported value: "OpenAI": supported values: "openai", "generic"',
      NOT_CHECKED,
    ],
  },
  {
    mistake: 'models as one string',
    object: gb({ endpoints: ep, models: 'llama' }),
    messages: [
      'spec.models: Invalid value: "string": spec.models in body must be of type array: "string"',
      NOT_CHECKED,
    ],
  },
  {
    mistake: 'a wildcard in a model name, and a stray space',
    object: gb({ endpoints: ep, models: ['llama-*', ' mistral'] }),
    messages: [
      `spec.models[0]: Invalid value: "llama-*": model names are matched exactly and take no wildcards ('*' alone means every model), got 'llama-*'`,
      `spec.models[1]: Invalid value: " mistral": a model name must not start or end with whitespace, got ' mistral'`,
    ],
    before: 'accepted; the backend then served no request for either name',
  },
  {
    mistake: "'*' together with model names",
    object: gb({ endpoints: ep, models: ['*', 'llama'] }),
    messages: ["spec.models: Invalid value: '*' serves every model and cannot be combined with model names"],
  },
  {
    mistake: 'deployment without an image',
    object: gb({ deployment: { replicas: 1 } }),
    messages: ['spec.deployment.image: Required value', NOT_CHECKED],
  },
  {
    mistake: 'negative GPUs and replicas',
    object: gb({ deployment: { image: 'vllm/vllm-openai', gpusPerReplica: -1, replicas: -2 } }),
    messages: [
      'spec.deployment.gpusPerReplica: Invalid value: -1: spec.deployment.gpusPerReplica in body should be greater than or equal to 0',
      'spec.deployment.replicas: Invalid value: -2: spec.deployment.replicas in body should be greater than or equal to 0',
    ],
  },
  {
    mistake: 'env variable with both a value and a Secret reference',
    object: gb({
      deployment: {
        image: 'vllm/vllm-openai',
        env: [{ name: 'HF_TOKEN', value: 'x', secretKeyRef: { name: 'hf' } }],
      },
    }),
    messages: ['spec.deployment.env[0]: Invalid value: set exactly one of value or secretKeyRef'],
  },
  {
    mistake: 'a TLS certificate for the sidecar without a sidecar',
    object: gb({ deployment: { image: 'vllm/vllm-openai', sidecarTLS: { secretName: 'gpu-tls' } } }),
    messages: [
      'spec.deployment.sidecarTLS: Invalid value: sidecarTLS needs dataplane: sidecar (the shared data plane takes its certificate from the chart value dataplane.tls.secretName)',
    ],
  },
  {
    mistake: 'registration without the shared secret',
    object: gb({ registration: {} }),
    messages: ['spec.registration.secretRef: Required value', NOT_CHECKED],
  },
  {
    mistake: 'a misspelt field (endpoint for endpoints)',
    object: gb({ endpoint: ep }),
    messages: [
      'Error from server (BadRequest): error when creating "STDIN": GpuBackend in version "v1alpha1" cannot be handled as a GpuBackend: strict decoding error: unknown field "spec.endpoint"',
    ],
  },
  {
    mistake: 'negative rate limit',
    object: tn({ limits: { requestsPerMinute: -5 } }),
    messages: [
      'spec.limits.requestsPerMinute: Invalid value: -5: spec.limits.requestsPerMinute in body should be greater than or equal to 0',
    ],
  },
  {
    mistake: 'fractional rate limit',
    object: tn({ limits: { requestsPerMinute: 1.5 } }),
    messages: [
      'spec.limits.requestsPerMinute: Invalid value: "number": spec.limits.requestsPerMinute in body must be of type integer: "number"',
      '<nil>: Invalid value: "": Checked value must be of type integer (default format) in spec.limits.requestsPerMinute',
      NOT_CHECKED,
    ],
  },
  {
    mistake: 'negative credits',
    object: tn({ quota: { credits: -10 } }),
    messages: [
      'spec.quota.credits: Invalid value: -10: spec.quota.credits in body should be greater than or equal to 0',
    ],
  },
  {
    mistake: 'a quota period that does not exist',
    object: tn({ quota: { credits: 10, period: 'Weekly' } }),
    messages: [
      'spec.quota.period: Unsupported value: "Weekly": supported values: "None", "Daily", "Monthly"',
      NOT_CHECKED,
    ],
  },
  {
    mistake: 'a quota without credits',
    object: tn({ quota: { period: 'Daily' } }),
    messages: ['spec.quota.credits: Required value', NOT_CHECKED],
  },
  {
    mistake: 'JWT with both a JWKS URL and an HS secret',
    object: tn({ jwt: { issuer: 'https://idp', jwksUrl: 'https://idp/jwks', hsSecretRef: { name: 's' } } }),
    messages: ['spec.jwt: Invalid value: set exactly one of jwksUrl or hsSecretRef'],
  },
  {
    mistake: 'JWT with neither',
    object: tn({ jwt: { issuer: 'https://idp' } }),
    messages: ['spec.jwt: Invalid value: set exactly one of jwksUrl or hsSecretRef'],
  },
  {
    mistake: 'JWT without an issuer',
    object: tn({ jwt: { jwksUrl: 'https://idp/jwks' } }),
    messages: ['spec.jwt.issuer: Required value', NOT_CHECKED],
  },
  {
    mistake: 'JWKS from a file',
    object: tn({ jwt: { issuer: 'https://idp', jwksUrl: 'file:///etc/jwks' } }),
    messages: [
      'spec.jwt.jwksUrl: Invalid value: "file:///etc/jwks": must be an http:// or https:// URL, got file:///etc/jwks',
    ],
  },
  {
    mistake: "suspended: 'yes' (quoted)",
    object: tn({ suspended: 'yes' }),
    messages: [
      'spec.suspended: Invalid value: "string": spec.suspended in body must be of type boolean: "string"',
      NOT_CHECKED,
    ],
  },
  {
    mistake: 'ApiKey without a tenant',
    object: ak({ disabled: false }),
    messages: ['spec.tenant: Required value', NOT_CHECKED],
  },
  {
    mistake: 'tenant by its display name',
    object: ak({ tenant: 'Acme Corp' }),
    messages: [
      `spec.tenant: Invalid value: "Acme Corp": must be the name of a Tenant in this namespace: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit (e.g. team-a), got 'Acme Corp'`,
    ],
    before: `spec.tenant in body should match '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$'`,
  },
  {
    mistake: 'expiry in words',
    object: ak({ tenant: 'acme', expiresAt: 'tomorrow' }),
    messages: [`spec.expiresAt: Invalid value: "tomorrow": ${EXPIRY} got 'tomorrow'`],
    before: `spec.expiresAt in body must be of type date-time: "tomorrow"`,
  },
  {
    mistake: 'expiry as a day without a time',
    object: ak({ tenant: 'acme', expiresAt: '2030-01-31' }),
    messages: [`spec.expiresAt: Invalid value: "2030-01-31": ${EXPIRY} got '2030-01-31'`],
    before: `spec.expiresAt in body must be of type date-time: "2030-01-31"`,
  },
  {
    mistake: 'expiry without a time zone',
    object: ak({ tenant: 'acme', expiresAt: '2030-01-31T23:59:59' }),
    messages: [`spec.expiresAt: Invalid value: "2030-01-31T23:59:59": ${EXPIRY} got '2030-01-31T23:59:59'`],
    before: `spec.expiresAt in body must be of type date-time: "2030-01-31T23:59:59"`,
  },
  {
    mistake: 'expiry on a day that does not exist',
    object: ak({ tenant: 'acme', expiresAt: '2030-02-30T00:00:00Z' }),
    messages: [`spec.expiresAt: Invalid value: "2030-02-30T00:00:00Z": ${EXPIRY} got '2030-02-30T00:00:00Z'`],
    before: `spec.expiresAt in body must be of type date-time: "2030-02-30T00:00:00Z"`,
  },
  {
    mistake: 'a CIDR with a trailing space, and a /33',
    object: ak({ tenant: 'acme', allowedCIDRs: ['10.0.0.1', '10.0.0.0/8 ', '10.0.0.0/33'] }),
    messages: [
      `spec.allowedCIDRs[1]: Invalid value: "10.0.0.0/8 ": must be a CIDR such as 10.0.0.0/8 or one address such as 10.0.0.1, got '10.0.0.0/8 '`,
      `spec.allowedCIDRs[2]: Invalid value: "10.0.0.0/33": must be a CIDR such as 10.0.0.0/8 or one address such as 10.0.0.1, got '10.0.0.0/33'`,
    ],
    before:
      'the bare address 10.0.0.1 was refused too (the data plane takes it as a /32), and the value was unquoted: `got 10.0.0.0/8`',
  },
  {
    mistake: 'negative per-key concurrency',
    object: ak({ tenant: 'acme', limits: { concurrentRequests: -1 } }),
    messages: [
      'spec.limits.concurrentRequests: Invalid value: -1: spec.limits.concurrentRequests in body should be greater than or equal to 0',
    ],
  },
];

/** What the server prints for a refused create, as error lines; [] when it was accepted. */
async function serverErrors(ns: string, obj: Obj): Promise<string[]> {
  try {
    await kubectl(['create', '--dry-run=server', '--validate=strict', '-n', ns, '-f', '-'], {
      input: JSON.stringify(obj),
    });
    return [];
  } catch (err) {
    const text = (err as Error).message.replace(/^kubectl [^\n]*? failed \(exit \d+\): /, '');
    const head = /^The \w+ "fixture" is invalid: ?/.exec(text);
    if (!head) return [text.trim()];
    const rest = text.slice(head[0].length).trim();
    return rest.startsWith('* ') ? rest.split('\n').map((l) => l.replace(/^\* /, '').trim()) : [rest];
  }
}

/** Error lines in a fixed order (the server's varies), its "not checked" note last. */
function sortedLines(lines: string[]): string[] {
  return [...lines].sort((a, b) =>
    a.startsWith('<nil>') !== b.startsWith('<nil>')
      ? a.startsWith('<nil>')
        ? 1
        : -1
      : a < b
        ? -1
        : a > b
          ? 1
          : 0,
  );
}

function docRow(m: Mistake, got: string[]): string {
  const { kind } = m.object as { kind: string };
  const spec = stringify((m.object as { spec: Obj }).spec, { collectionStyle: 'flow' }).trim();
  const cell = (s: string) => s.replaceAll('|', '\\|');
  // Sorted: the API server lists several errors in no fixed order.
  const message = sortedLines(got)
    .map((l) => `\`${cell(l)}\``)
    .join('<br>');
  return `| ${cell(m.mistake)} | ${kind} | \`${cell(spec)}\` | ${message} | ${m.before ? cell(m.before) : ''} |`;
}

const BEGIN = '<!-- crd-errors:begin (generated by test/cluster/crd-errors.test.ts) -->';
const END = '<!-- crd-errors:end -->';

describe('invalid CRs: the API server says what to fix', () => {
  let ns = '';
  const answers = new Map<Mistake, string[]>();

  beforeAll(async () => {
    await installCrds();
    ns = await newNamespace('crd-errors');
    for (const m of MISTAKES) answers.set(m, await serverErrors(ns, m.object));
    if (process.env.GPUGATE_UPDATE_DOCS === '1') {
      const doc = readFileSync(DOC, 'utf8');
      const table = [
        '| Mistake | Kind | spec | The API server says | Before gpugate improved it |',
        '|---|---|---|---|---|',
        ...MISTAKES.map((m) => docRow(m, answers.get(m)!)),
      ].join('\n');
      const from = doc.indexOf(BEGIN);
      const to = doc.indexOf(END);
      if (from < 0 || to < from) throw new Error(`${DOC} has no ${BEGIN} ... ${END} section`);
      writeFileSync(DOC, `${doc.slice(0, from)}${BEGIN}\n${table}\n${doc.slice(to)}`);
    }
  });

  it('has a table of at least 30 realistic mistakes', () => {
    expect(MISTAKES.length).toBeGreaterThanOrEqual(30);
  });

  it.each(MISTAKES.map((m) => [m.mistake, m]))(
    '%s: refused with exactly the recorded message',
    (_name, m) => {
      expect(sortedLines(answers.get(m)!)).toEqual(sortedLines(m.messages));
    },
  );

  it('docs/crd-errors.md shows exactly these messages', () => {
    const doc = readFileSync(DOC, 'utf8');
    for (const m of MISTAKES) expect(doc, m.mistake).toContain(docRow(m, m.messages));
  });

  it('the fixes stay fixes: a bare client address, exact model names and RFC 3339 expiries are accepted', async () => {
    expect(
      await serverErrors(ns, ak({ tenant: 'acme', allowedCIDRs: ['10.0.0.1', '2001:db8::1', '10.0.0.0/8'] })),
    ).toEqual([]);
    for (const expiresAt of [
      '2030-01-31T23:59:59Z',
      '2030-01-31T18:00:00-05:00',
      '2030-01-31T23:59:59.250Z',
    ]) {
      expect(await serverErrors(ns, ak({ tenant: 'acme', expiresAt })), expiresAt).toEqual([]);
    }
    expect(
      await serverErrors(
        ns,
        gb({ endpoints: ep, models: ['meta-llama/Llama-3.1-8B-Instruct', 'Llama 3 70B'] }),
      ),
    ).toEqual([]);
    expect(
      await serverErrors(ns, gb({ endpoints: ep, timeouts: { connect: '1.5s', total: '1h30m' } })),
    ).toEqual([]);
  });

  it('an ApiKey cannot move to another tenant', async () => {
    await kubectl(['create', '-n', ns, '-f', '-'], {
      input: JSON.stringify({ ...ak({ tenant: 'acme' }), metadata: { name: 'moving' } }),
    });
    const moved = JSON.stringify({ ...ak({ tenant: 'other' }), metadata: { name: 'moving' } });
    await expect(
      kubectl(['apply', '--server-side', '--force-conflicts', '-n', ns, '-f', '-'], { input: moved }),
    ).rejects.toThrow(
      'The ApiKey "moving" is invalid: spec.tenant: Invalid value: "other": tenant is immutable; create a new ApiKey instead',
    );
  });
});
