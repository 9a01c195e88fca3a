// Tenant: an account — which models and backends it may use, its limits, its credit quota, and how
// its users' JWTs are verified.
import Type, { type Static } from 'typebox';
import {
  Conditions,
  HttpUrl,
  ModelNames,
  ObservedGeneration,
  QUOTA_PERIODS,
  Quota,
  RateLimits,
  SecretKeyRef,
  StringEnum,
  cel,
  type CustomObject,
  type KindDefinition,
} from './common.ts';

const Jwt = Type.Object(
  {
    issuer: Type.String({
      description:
        'Expected `iss` claim. Tokens are matched to this tenant by issuer (and audience), never by a client header.',
      minLength: 1,
      maxLength: 2048,
    }),
    audiences: Type.Optional(
      Type.Array(Type.String({ description: 'An accepted `aud` value.', minLength: 1, maxLength: 2048 }), {
        description:
          'Accepted `aud` values; a token must carry at least one. Absent: the audience is not checked.',
        maxItems: 16,
      }),
    ),
    jwksUrl: Type.Optional(
      HttpUrl('JWKS URL of the identity provider; keys are cached and refreshed on an unknown kid.'),
    ),
    hsSecretRef: Type.Optional(
      SecretKeyRef('Secret holding an HS256 shared secret, for issuers without a JWKS.', 'secret'),
    ),
    subjectClaim: Type.String({
      description: 'Claim that becomes X-User-ID for the backend.',
      minLength: 1,
      maxLength: 256,
      default: 'sub',
    }),
    userNameClaim: Type.String({
      description: 'Claim that becomes X-Username for the backend.',
      minLength: 1,
      maxLength: 256,
      default: 'preferred_username',
    }),
  },
  {
    description: 'Accept JSON Web Tokens from an identity provider for this tenant, besides API keys.',
    ...cel({
      rule: 'has(self.jwksUrl) != has(self.hsSecretRef)',
      message: 'set exactly one of jwksUrl or hsSecretRef',
    }),
  },
);

export const TenantSpec = Type.Object(
  {
    displayName: Type.Optional(
      Type.String({ description: 'Human-readable name for dashboards.', maxLength: 256 }),
    ),
    suspended: Type.Boolean({
      description: 'Refuse every request of this tenant with 403 while true; keys and usage are kept.',
      default: false,
    }),
    allowedModels: Type.Optional(ModelNames('Models this tenant may use. Absent or empty: every model.')),
    allowedBackends: Type.Optional(
      Type.Array(
        Type.String({
          description: 'A GpuBackend: name (same namespace) or namespace/name.',
          minLength: 1,
          maxLength: 317,
          pattern: '^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$',
        }),
        {
          description: 'GpuBackends this tenant may use. Absent or empty: every backend.',
          maxItems: 256,
          'x-kubernetes-list-type': 'set',
        },
      ),
    ),
    limits: Type.Optional(RateLimits('the tenant (all its keys and users together)')),
    quota: Type.Optional(Quota('the tenant')),
    failOpen: Type.Boolean({
      description:
        'When usage cannot be recorded (database unreachable and the gateway buffer full): true keeps serving (usage may be lost beyond the buffer), false refuses requests with 503 until recording works again.',
      default: true,
    }),
    jwt: Type.Optional(Jwt),
  },
  { description: 'Desired state of a Tenant.' },
);
export type TenantSpec = Static<typeof TenantSpec>;

export const TenantStatus = Type.Object(
  {
    observedGeneration: Type.Optional(ObservedGeneration),
    conditions: Type.Optional(Conditions),
    keys: Type.Optional(Type.Integer({ description: 'Number of ApiKeys of this tenant.', minimum: 0 })),
    usage: Type.Optional(
      Type.Object(
        {
          period: Type.Optional(
            StringEnum(QUOTA_PERIODS, { description: 'Quota period the figures belong to.' }),
          ),
          periodStart: Type.Optional(
            Type.String({ description: 'Start of the current period.', format: 'date-time' }),
          ),
          periodEnd: Type.Optional(
            Type.String({ description: 'End of the current period (next reset).', format: 'date-time' }),
          ),
          requests: Type.Optional(
            Type.Integer({ description: 'Requests this period.', minimum: 0, format: 'int64' }),
          ),
          inputTokens: Type.Optional(
            Type.Integer({ description: 'Input tokens this period.', minimum: 0, format: 'int64' }),
          ),
          outputTokens: Type.Optional(
            Type.Integer({ description: 'Output tokens this period.', minimum: 0, format: 'int64' }),
          ),
          creditsUsed: Type.Optional(Type.Number({ description: 'Credits spent this period.', minimum: 0 })),
          creditsRemaining: Type.Optional(
            Type.Number({ description: 'Credits left this period; absent without a quota.' }),
          ),
          updatedAt: Type.Optional(
            Type.String({
              description:
                'When these figures were read from the usage database. While they stay the same, it is rewritten at most every 5 minutes (not at every read), so the status is not written again for nothing.',
              format: 'date-time',
            }),
          ),
        },
        { description: 'Usage in the current quota period, read from the usage database on an interval.' },
      ),
    ),
  },
  { description: 'Observed state of a Tenant.' },
);
export type TenantStatus = Static<typeof TenantStatus>;

export type Tenant = CustomObject<'Tenant', TenantSpec, TenantStatus>;

export const TenantDefinition: KindDefinition = {
  kind: 'Tenant',
  plural: 'tenants',
  singular: 'tenant',
  shortNames: ['tn'],
  description:
    "Tenant is an account of the GPU gateway: which models and backends it may use, its rate limits and credit quota, and how its users' JWTs are verified.",
  spec: TenantSpec,
  status: TenantStatus,
  printerColumns: [
    {
      name: 'Ready',
      type: 'string',
      jsonPath: '.status.conditions[?(@.type=="Ready")].status',
      description: 'Whether the tenant can make requests.',
    },
    {
      name: 'Suspended',
      type: 'boolean',
      jsonPath: '.spec.suspended',
      description: 'Whether the tenant is suspended.',
    },
    { name: 'Quota', type: 'number', jsonPath: '.spec.quota.credits', description: 'Credits per period.' },
    { name: 'Period', type: 'string', jsonPath: '.spec.quota.period', description: 'Quota period.' },
    {
      name: 'Used',
      type: 'number',
      jsonPath: '.status.usage.creditsUsed',
      description: 'Credits spent this period.',
    },
    { name: 'Keys', type: 'integer', jsonPath: '.status.keys', description: 'Number of API keys.' },
    {
      name: 'Age',
      type: 'date',
      jsonPath: '.metadata.creationTimestamp',
      description: 'Time since creation.',
    },
  ],
};
