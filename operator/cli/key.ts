// gpugate key create | info. A new key is generated here, written to its Secret and printed once;
// afterwards only its prefix is ever shown. `key info` finds a key by its value (hash comparison)
// or by a prefix, and never prints the value.
import { randomBytes } from 'node:crypto';
import type { TSchema } from 'typebox';
import { Value } from 'typebox/value';
import {
  API_VERSION,
  ApiKeySpec,
  DATE_TIME_FORM,
  GENERATED_SECRET_KEY,
  generatedSecretName,
  type ApiKey,
} from '../api/v1alpha1/index.ts';
import {
  checkKeyShape,
  generateApiKey,
  hashApiKey,
  KEY_SCHEME,
  keyPrefix,
} from '../../dataplane/auth/keys.ts';
import { periodDays, quotaState, usageReport } from '../../dataplane/usage/queries.ts';
import { checkName, formatCredits, notFound, table, usageError, type Command } from './command.ts';
import { requireTenant, tenantId } from './tenant.ts';

const EXPIRES_AT = (ApiKeySpec as unknown as { properties: Record<string, TSchema> }).properties.expiresAt!;

const create: Command = {
  path: ['key', 'create'],
  summary: 'Create an ApiKey for a tenant and print the key once',
  args: ['<tenant>'],
  options: {
    name: { type: 'string' },
    description: { type: 'string' },
    'expires-at': { type: 'string' },
  },
  optionHelp: [
    '--name NAME          the ApiKey name (default <tenant>-<random>)',
    '--description TEXT   what the key is for',
    '--expires-at TIME    RFC 3339 time with a time zone after which the key is refused, e.g. 2030-01-01T00:00:00Z',
  ],
  async run(ctx, [rawTenant], values) {
    const tenant = await requireTenant(ctx, rawTenant!);
    const namespace = tenant.metadata.namespace ?? 'default';
    const name = checkName(
      '--name',
      typeof values.name === 'string'
        ? values.name
        : `${tenant.metadata.name}-${randomBytes(3).toString('hex')}`,
    );
    const expiresAt = values['expires-at'];
    // The schema's own check: a value the CRD (or standalone mode) would refuse never gets this far.
    if (typeof expiresAt === 'string' && !Value.Check(EXPIRES_AT, expiresAt)) {
      throw usageError(`--expires-at must be ${DATE_TIME_FORM}, got ${JSON.stringify(expiresAt)}`);
    }
    const apiKey = {
      apiVersion: API_VERSION,
      kind: 'ApiKey',
      metadata: { name, namespace },
      spec: {
        tenant: tenant.metadata.name,
        ...(typeof values.description === 'string' ? { description: values.description } : {}),
        ...(typeof expiresAt === 'string' ? { expiresAt } : {}),
      },
    } as ApiKey;
    const key = generateApiKey();
    const target = await ctx.target();
    await target.createApiKey(apiKey, {
      namespace,
      name: generatedSecretName(name),
      key: GENERATED_SECRET_KEY,
      value: key,
    });
    const id = `${namespace}/${name}`;
    return {
      text: [
        `created ApiKey ${id} for tenant ${tenantId(tenant)} in ${target.description}`,
        `key (shown once, store it now; only its prefix ${keyPrefix(key)} is shown again):`,
        key,
      ].join('\n'),
      json: {
        apiKey: id,
        tenant: tenantId(tenant),
        prefix: keyPrefix(key),
        secret: `${namespace}/${generatedSecretName(name)}`,
        key,
      },
    };
  },
};

const info: Command = {
  path: ['key', 'info'],
  summary: 'Find an ApiKey by its value or prefix (the key itself is never printed)',
  args: ['<key-or-prefix>'],
  options: { 'all-namespaces': { type: 'boolean', short: 'A' } },
  optionHelp: ['-A, --all-namespaces  search every namespace (default: the current one)'],
  async run(ctx, [raw], values) {
    const needle = raw!.trim();
    const shape = checkKeyShape(needle);
    const whole = shape === 'ok';
    if (!whole) {
      if (shape === 'bad-checksum') {
        throw usageError(
          'the argument looks like a whole key but its checksum does not match: it is mistyped or truncated',
        );
      }
      if (!needle.startsWith(KEY_SCHEME) || needle.length < KEY_SCHEME.length + 4) {
        throw usageError(
          `give a whole key or a prefix of at least 8 characters starting with ${KEY_SCHEME} (as in "${KEY_SCHEME}AbCd")`,
        );
      }
    }
    const target = await ctx.target();
    const keys = await target.listApiKeys(values['all-namespaces'] === true ? null : ctx.namespace());
    const wanted = whole ? hashApiKey(needle) : null;
    const found: { apiKey: ApiKey; prefix: string }[] = [];
    for (const apiKey of keys) {
      const value = await target.readKey(apiKey);
      if (value === null) continue;
      if (wanted ? hashApiKey(value) === wanted : value.startsWith(needle))
        found.push({ apiKey, prefix: keyPrefix(value) });
    }
    const shown = whole ? keyPrefix(needle) : needle;
    if (found.length === 0) {
      throw notFound(
        `no ApiKey in ${target.description}${values['all-namespaces'] === true ? '' : ` (namespace ${ctx.namespace()}; -A searches all)`} has a key ${whole ? `matching ${shown}…` : `starting with ${shown}`}`,
      );
    }
    if (found.length > 1) {
      const ids = found.map((f) => `${f.apiKey.metadata.namespace ?? 'default'}/${f.apiKey.metadata.name}`);
      throw usageError(
        `prefix ${shown} matches ${found.length} keys (${ids.join(', ')}): give more characters`,
      );
    }
    const { apiKey, prefix } = found[0]!;
    const namespace = apiKey.metadata.namespace ?? 'default';
    const id = `${namespace}/${apiKey.metadata.name}`;
    const tenant = `${namespace}/${apiKey.spec.tenant}`;
    let usage = null;
    let quota = null;
    if (ctx.hasDb()) {
      usage = await usageReport(ctx.db(), {
        tenant,
        keyId: id,
        ...periodDays(apiKey.spec.quota?.period ?? null, Date.now()),
      });
      quota = apiKey.spec.quota ? await quotaState(ctx.db(), 'key', id) : null;
    }
    const rows: [string, string][] = [
      ['api key', id],
      ['tenant', tenant],
      ['prefix', prefix],
      ['disabled', apiKey.spec.disabled ? 'yes' : 'no'],
      ['expires at', apiKey.spec.expiresAt ?? 'never'],
      ['description', apiKey.spec.description ?? '-'],
      [
        'quota',
        apiKey.spec.quota
          ? `${formatCredits(apiKey.spec.quota.credits)} credits, period ${apiKey.spec.quota.period}`
          : 'tenant quota only',
      ],
    ];
    if (usage) {
      rows.push(
        ['usage since', usage.from ?? 'the beginning'],
        ['requests', String(usage.totals.requests)],
        ['credits used', formatCredits(usage.totals.credits)],
      );
      if (quota) rows.push(['credits left', formatCredits(quota.remaining)]);
    }
    return {
      text: table(rows),
      json: {
        apiKey: id,
        tenant,
        prefix,
        disabled: apiKey.spec.disabled ?? false,
        expiresAt: apiKey.spec.expiresAt ?? null,
        description: apiKey.spec.description ?? null,
        quota: apiKey.spec.quota ?? null,
        usage,
        quotaState: quota,
      },
    };
  },
};

export const keyCommands: Command[] = [create, info];
