// ApiKey: a credential of one tenant. The key lives only in a Secret; everything else (the
// snapshot, status, logs) sees its SHA-256 and a short prefix.
import Type, { type Static } from 'typebox';
import {
  Conditions,
  DateTime,
  ModelNames,
  ObjectName,
  ObservedGeneration,
  QUOTED_SELF,
  Quota,
  RateLimits,
  SecretKeyRef,
  cel,
  type CustomObject,
  type KindDefinition,
} from './common.ts';

export const ApiKeySpec = Type.Object(
  {
    tenant: {
      ...ObjectName('Name of the Tenant (same namespace) this key belongs to. Immutable.', 'Tenant'),
      ...cel({ rule: 'self == oldSelf', message: 'tenant is immutable; create a new ApiKey instead' }),
    },
    secretRef: Type.Optional(
      SecretKeyRef(
        'Secret holding the key. Absent: the operator generates a high-entropy key into a new Secret named after this ApiKey and never prints it again.',
        'key',
      ),
    ),
    description: Type.Optional(Type.String({ description: 'What the key is for.', maxLength: 1024 })),
    expiresAt: Type.Optional(DateTime('After this time the key is refused (401, "expired").')),
    disabled: Type.Boolean({ description: 'Refuse the key (401, "disabled") while true.', default: false }),
    limits: Type.Optional(RateLimits('this key')),
    quota: Type.Optional(Quota('this key (within the tenant quota)')),
    allowedModels: Type.Optional(
      ModelNames("Models this key may use, within the tenant's. Absent or empty: the tenant's."),
    ),
    allowedCIDRs: Type.Optional(
      Type.Array(
        Type.String({
          description:
            'A client network in CIDR notation, e.g. 10.0.0.0/8 or 2001:db8::/32, or one address (a /32 or /128).',
          maxLength: 64,
          ...cel({
            // The data plane takes a bare address as its /32 or /128 (dataplane/auth/cidr.ts).
            rule: 'isCIDR(self) || isIP(self)',
            messageExpression: `'must be a CIDR such as 10.0.0.0/8 or one address such as 10.0.0.1, got ' + ${QUOTED_SELF}`,
          }),
        }),
        {
          description: 'Client networks the key may be used from (403 otherwise). Absent or empty: anywhere.',
          maxItems: 64,
          'x-kubernetes-list-type': 'set',
        },
      ),
    ),
  },
  { description: 'Desired state of an ApiKey.' },
);
export type ApiKeySpec = Static<typeof ApiKeySpec>;

export const ApiKeyStatus = Type.Object(
  {
    observedGeneration: Type.Optional(ObservedGeneration),
    conditions: Type.Optional(Conditions),
    prefix: Type.Optional(
      Type.String({
        description: 'The first characters of the key, to recognise it; never the key.',
        maxLength: 16,
      }),
    ),
    secretName: Type.Optional(Type.String({ description: 'The Secret that holds the key.', maxLength: 253 })),
  },
  { description: 'Observed state of an ApiKey.' },
);
export type ApiKeyStatus = Static<typeof ApiKeyStatus>;

export type ApiKey = CustomObject<'ApiKey', ApiKeySpec, ApiKeyStatus>;

export const ApiKeyDefinition: KindDefinition = {
  kind: 'ApiKey',
  plural: 'apikeys',
  singular: 'apikey',
  shortNames: ['ak'],
  description:
    'ApiKey is a credential of one Tenant, with its own optional limits, quota, model list, client networks and expiry. The key is kept only in a Secret.',
  spec: ApiKeySpec,
  status: ApiKeyStatus,
  printerColumns: [
    { name: 'Tenant', type: 'string', jsonPath: '.spec.tenant', description: 'Owning tenant.' },
    { name: 'Prefix', type: 'string', jsonPath: '.status.prefix', description: 'Key prefix.' },
    {
      name: 'Ready',
      type: 'string',
      jsonPath: '.status.conditions[?(@.type=="Ready")].status',
      description: 'Whether the key is accepted.',
    },
    { name: 'Expires', type: 'string', jsonPath: '.spec.expiresAt', description: 'Expiry time.' },
    {
      name: 'Age',
      type: 'date',
      jsonPath: '.metadata.creationTimestamp',
      description: 'Time since creation.',
    },
  ],
};

/** Secret the operator creates for an ApiKey without secretRef, and the key inside it. */
export function generatedSecretName(apiKeyName: string): string {
  return `${apiKeyName}-gpugate-key`;
}
export const GENERATED_SECRET_KEY = 'key';
/**
 * Where a generated key may live for the ApiKey object with this UID: the usual name, or, when a Secret
 * of that name is held by an earlier object of the same name (deleted, its Secret not yet collected or
 * orphaned), a name that carries the UID's first 8 characters. Only a Secret owned by the UID counts.
 */
export function generatedSecretNames(apiKeyName: string, uid: string): [string, string] {
  const name = generatedSecretName(apiKeyName);
  return [name, `${name}-${uid.slice(0, 8)}`];
}

/**
 * The generated Secret the ApiKey object with this UID uses, from the owner UIDs of the Secrets that
 * exist (`ownersOf` gives undefined for a name no Secret has): the one of generatedSecretNames it owns;
 * else the usual name when it is free; else (`taken`: a Secret this object does not own holds the usual
 * name) the UID-suffixed one. The controller generates the key there and the compiler reads it there.
 */
export function generatedSecretFor(
  apiKeyName: string,
  uid: string,
  ownersOf: (secretName: string) => readonly string[] | undefined,
): { name: string; owned: boolean; taken: boolean } {
  const [usual, suffixed] = generatedSecretNames(apiKeyName, uid);
  const usualOwners = ownersOf(usual);
  if (usualOwners?.includes(uid)) return { name: usual, owned: true, taken: false };
  if (ownersOf(suffixed)?.includes(uid)) return { name: suffixed, owned: true, taken: false };
  return usualOwners === undefined
    ? { name: usual, owned: false, taken: false }
    : { name: suffixed, owned: false, taken: true };
}
