// Building blocks shared by the three kinds. Everything here produces OpenAPI v3 that is also a
// structural Kubernetes schema: every node has a type, no additionalProperties: false (the API
// server prunes unknown fields instead), maps are additionalProperties schemas.
import Type, { type Static, type TSchema } from 'typebox';

export const GROUP = 'gpugate.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;

/** A string limited to the given values, emitted as `type: string, enum: [...]`. */
export function StringEnum<const T extends readonly string[]>(
  values: T,
  options: { description: string; default?: T[number] },
) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });
}

/** A string-to-string map. */
export function StringMap(description: string) {
  return Type.Unsafe<Record<string, string>>({
    type: 'object',
    additionalProperties: { type: 'string', maxLength: 1024, description: 'A value.' },
    description,
  });
}

/** A CEL rule as Kubernetes reads it from `x-kubernetes-validations`. */
export interface CelRule {
  rule: string;
  message?: string;
  messageExpression?: string;
  fieldPath?: string;
  reason?: 'FieldValueInvalid' | 'FieldValueForbidden' | 'FieldValueRequired' | 'FieldValueDuplicate';
}

export function cel(...rules: CelRule[]) {
  return { 'x-kubernetes-validations': rules };
}

/**
 * Marks a string schema's `pattern` as one the CRD states as a CEL rule with this message instead:
 * the API server's own message for a pattern quotes the regular expression, a rule can say what is
 * wanted. `messageExpression` is CEL over `self`. The pattern stays for TypeBox (standalone mode);
 * toStructural (crd.ts) makes the rule.
 */
export const PATTERN_MESSAGE = 'x-gpugate-pattern-message';

/** CEL for `'<self>'`, so leading and trailing spaces in a bad value are visible. */
export const QUOTED_SELF = `"'" + self + "'"`;

/**
 * Marks a string schema's `format` as one the CRD states as a CEL rule with this message instead, as
 * PATTERN_MESSAGE does for a pattern: the API server's own message for a format is only "must be of type
 * date-time". The rule is Kubernetes' CEL format library (`format.datetime().validate(self)`), which checks
 * what the `format` checked; the format stays for TypeBox (standalone mode). toStructural (crd.ts) makes it.
 */
export const FORMAT_MESSAGE = 'x-gpugate-format-message';

/** What a DateTime accepts, in the words of its refusals (the CRD's and the CLI's). */
export const DATE_TIME_FORM =
  'a date and time with a time zone (RFC 3339), such as 2030-01-31T23:59:59Z or 2030-01-31T18:00:00-05:00';

/** A point in time (RFC 3339 with a time zone), with a refusal that shows the form and an example. */
export function DateTime(description: string) {
  return Type.String({
    description: `${description} RFC 3339 with a time zone, e.g. 2030-01-31T23:59:59Z.`,
    format: 'date-time',
    [FORMAT_MESSAGE]: `'must be ${DATE_TIME_FORM}, got ' + ${QUOTED_SELF}`,
    maxLength: 64,
  });
}

export const DURATION_PATTERN = '^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$';

/** Go-style duration ("500ms", "30s", "5m", "1h30m"), the form CEL's duration() parses. */
export function Duration(description: string, defaultValue?: string) {
  return Type.String({
    description: `${description} A duration such as 500ms, 30s, 5m or 1h30m.`,
    pattern: DURATION_PATTERN,
    [PATTERN_MESSAGE]: `'must be a duration such as 500ms, 30s, 5m or 1h30m (a number and a unit: ms, s, m or h), got ' + ${QUOTED_SELF}`,
    maxLength: 32,
    ...(defaultValue === undefined ? {} : { default: defaultValue }),
  });
}

/** The name of an object in the same namespace (DNS-1123 subdomain), with a readable refusal. */
export const ObjectName = (description: string, kind: string) =>
  Type.String({
    description,
    minLength: 1,
    maxLength: 253,
    pattern: '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$',
    [PATTERN_MESSAGE]: `'must be the name of a ${kind} in this namespace: lower-case letters, digits, \\'-\\' and \\'.\\', starting and ending with a letter or digit (e.g. team-a), got ' + ${QUOTED_SELF}`,
  });

export const HttpUrl = (description: string) =>
  Type.String({
    description: `${description} Must be an http:// or https:// URL.`,
    maxLength: 2048,
    ...cel({
      rule: "self.startsWith('http://') || self.startsWith('https://')",
      messageExpression: "'must be an http:// or https:// URL, got ' + self",
    }),
  });

export const ModelNames = (description: string) =>
  Type.Array(
    Type.String({
      minLength: 1,
      maxLength: 256,
      description: "A model name, exactly as clients send it in `model`; '*' alone means every model.",
      ...cel(
        {
          // Names are matched exactly: 'llama-*' would silently match no request.
          rule: "self == '*' || !self.contains('*')",
          messageExpression: `'model names are matched exactly and take no wildcards (\\'*\\' alone means every model), got ' + ${QUOTED_SELF}`,
        },
        {
          rule: "self.matches('^\\\\S(.*\\\\S)?$')",
          messageExpression: `'a model name must not start or end with whitespace, got ' + ${QUOTED_SELF}`,
        },
      ),
    }),
    {
      description,
      maxItems: 256,
      'x-kubernetes-list-type': 'set',
    },
  );

export const SecretKeyRef = (description: string, defaultKey: string) =>
  Type.Object(
    {
      name: Type.String({
        description: 'Name of the Secret, in the same namespace as this object.',
        minLength: 1,
        maxLength: 253,
      }),
      key: Type.String({
        description: `Key within the Secret's data. Defaults to "${defaultKey}".`,
        minLength: 1,
        maxLength: 253,
        default: defaultKey,
      }),
    },
    { description },
  );
export type SecretKeyRef = Static<ReturnType<typeof SecretKeyRef>>;

export const RateLimits = (whose: string) =>
  Type.Object(
    {
      requestsPerMinute: Type.Optional(
        Type.Integer({
          description: `Requests per minute ${whose} may make across all gateway replicas. Absent or 0: unlimited.`,
          minimum: 0,
        }),
      ),
      tokensPerMinute: Type.Optional(
        Type.Integer({
          description: `Input plus output tokens per minute ${whose} may use across all replicas, estimated at admission and corrected from the backend's usage report. Absent or 0: unlimited.`,
          minimum: 0,
        }),
      ),
      concurrentRequests: Type.Optional(
        Type.Integer({
          description: `Requests ${whose} may have in flight at once across all replicas. Absent or 0: unlimited.`,
          minimum: 0,
        }),
      ),
    },
    {
      description: `Rate limits for ${whose}. Each gateway replica enforces its share (limit ÷ live replicas).`,
    },
  );

export const QUOTA_PERIODS = ['None', 'Daily', 'Monthly'] as const;

export const Quota = (whose: string) =>
  Type.Object(
    {
      credits: Type.Number({
        description: `Credits ${whose} may spend per period. Requests are charged by the backend's pricing and the route's cost.`,
        minimum: 0,
      }),
      period: StringEnum(QUOTA_PERIODS, {
        description:
          'When the allowance renews: Daily (00:00 UTC), Monthly (the 1st, 00:00 UTC) or None (a one-off allowance that never resets; top it up).',
        default: 'Monthly',
      }),
    },
    { description: `A hard credit quota for ${whose}, enforced exactly across gateway replicas.` },
  );

/** metav1.Condition, as every Kubernetes API uses it. */
export const Condition = Type.Object(
  {
    type: Type.String({
      description: 'Type of condition in CamelCase, e.g. Ready.',
      maxLength: 316,
      pattern:
        '^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$',
    }),
    status: StringEnum(['True', 'False', 'Unknown'] as const, { description: 'Status of the condition.' }),
    observedGeneration: Type.Optional(
      Type.Integer({
        description:
          'The metadata.generation this condition was set for; older means the condition is out of date.',
        minimum: 0,
        format: 'int64',
      }),
    ),
    lastTransitionTime: Type.String({
      description: 'Last time the condition changed status.',
      format: 'date-time',
    }),
    reason: Type.String({
      description: 'Machine-readable CamelCase reason for the last transition.',
      minLength: 1,
      maxLength: 1024,
      pattern: '^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$',
    }),
    message: Type.String({ description: 'Human-readable details of the last transition.', maxLength: 32768 }),
  },
  { description: 'A metav1.Condition: one aspect of the current state of this object.' },
);
export type Condition = Static<typeof Condition>;

export const Conditions = Type.Array(Condition, {
  description: 'Current state of this object, one entry per condition type (Ready and friends).',
  maxItems: 16,
  'x-kubernetes-list-type': 'map',
  'x-kubernetes-list-map-keys': ['type'],
});

export const ObservedGeneration = Type.Integer({
  description: 'The metadata.generation the controller last acted on.',
  minimum: 0,
  format: 'int64',
});

/** The common envelope of a namespaced custom object. */
export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface CustomObject<Kind extends string, Spec, Status> {
  apiVersion: typeof API_VERSION;
  kind: Kind;
  metadata: ObjectMeta;
  spec: Spec;
  status?: Status;
}

/** Printer column as CRDs declare them. */
export interface PrinterColumn {
  name: string;
  type: 'string' | 'integer' | 'number' | 'boolean' | 'date';
  jsonPath: string;
  description: string;
  priority?: number;
}

/** What the generator needs to write one CRD. */
export interface KindDefinition {
  kind: string;
  plural: string;
  singular: string;
  shortNames: string[];
  description: string;
  spec: TSchema;
  status: TSchema;
  printerColumns: PrinterColumn[];
  /** Rules on the whole object (spec and metadata together). */
  rules?: CelRule[];
}
