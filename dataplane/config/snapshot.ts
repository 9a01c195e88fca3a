// The snapshot: everything the data plane needs, free of Kubernetes types. The operator (and
// standalone mode) compile CRs into it; the data plane validates it on receipt and compiles it into
// its runtime. This file is the contract between the two: change it only with a schema version bump.
import Type, { type Static } from 'typebox';

/** Snapshot schema versions this data plane understands. A push with another version is refused. */
export const SNAPSHOT_SCHEMA_VERSION = 1;
export const SUPPORTED_SCHEMA_VERSIONS: readonly number[] = [SNAPSHOT_SCHEMA_VERSION];

const Id = Type.String({ minLength: 1, maxLength: 253, description: 'namespace/name of the source object' });
const Millis = Type.Integer({ minimum: 0 });
const Credits = Type.Number({ minimum: 0 });

export const RateLimits = Type.Object(
  {
    requestsPerMinute: Type.Optional(Type.Integer({ minimum: 0 })),
    tokensPerMinute: Type.Optional(Type.Integer({ minimum: 0 })),
    concurrentRequests: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);
export type RateLimits = Static<typeof RateLimits>;

export const QuotaPeriod = Type.Enum(['None', 'Daily', 'Monthly']);
export type QuotaPeriod = Static<typeof QuotaPeriod>;

export const Quota = Type.Object({ credits: Credits, period: QuotaPeriod }, { additionalProperties: false });
export type Quota = Static<typeof Quota>;

export const EndpointSource = Type.Enum(['static', 'pod', 'registered', 'gateway']);
export type EndpointSource = Static<typeof EndpointSource>;

export const Endpoint = Type.Object(
  {
    /** Stable within a backend; the data plane keeps pools and health state keyed by it. */
    id: Type.String({ minLength: 1 }),
    url: Type.String({ pattern: '^https?://' }),
    weight: Type.Integer({ minimum: 1, maximum: 1000 }),
    source: EndpointSource,
    /** False for endpoints the control plane knows are not ready (pod not Ready, disabled). */
    ready: Type.Boolean(),
  },
  { additionalProperties: false },
);
export type Endpoint = Static<typeof Endpoint>;

export const Route = Type.Object(
  {
    pathPrefix: Type.String({ pattern: '^/' }),
    /** Upper-case HTTP methods; empty means every method. */
    methods: Type.Array(Type.String({ pattern: '^[A-Z]+$' })),
    public: Type.Boolean(),
    /** Credits charged per request on this route, on top of the backend's pricing; absent: pricing only. */
    cost: Type.Optional(Credits),
  },
  { additionalProperties: false },
);
export type Route = Static<typeof Route>;

export const BalancingPolicy = Type.Enum(['RoundRobin', 'LeastRequest', 'QueueAware']);
export type BalancingPolicy = Static<typeof BalancingPolicy>;

export const Backend = Type.Object(
  {
    id: Id,
    protocol: Type.Enum(['openai', 'generic']),
    /** Model names served, or ['*'] for any. */
    models: Type.Array(Type.String({ minLength: 1 })),
    routes: Type.Array(Route),
    endpoints: Type.Array(Endpoint),
    balancing: Type.Object(
      {
        policy: BalancingPolicy,
        /** 0 means unlimited. */
        maxInflightPerEndpoint: Type.Integer({ minimum: 0 }),
        maxQueue: Type.Integer({ minimum: 0 }),
        queueTimeoutMs: Millis,
        /** Where QueueAware scrapes model-server metrics on each endpoint. */
        metricsPath: Type.String({ pattern: '^/' }),
      },
      { additionalProperties: false },
    ),
    healthCheck: Type.Union([
      Type.Null(),
      Type.Object(
        {
          path: Type.String({ pattern: '^/' }),
          intervalMs: Millis,
          timeoutMs: Millis,
          healthyThreshold: Type.Integer({ minimum: 1 }),
          unhealthyThreshold: Type.Integer({ minimum: 1 }),
        },
        { additionalProperties: false },
      ),
    ]),
    retries: Type.Object(
      {
        attempts: Type.Integer({ minimum: 0, maximum: 10 }),
        retryOnStatus: Type.Array(Type.Integer({ minimum: 500, maximum: 599 })),
      },
      { additionalProperties: false },
    ),
    timeouts: Type.Object(
      { connectMs: Millis, firstByteMs: Millis, totalMs: Millis },
      { additionalProperties: false },
    ),
    maxRequestBytes: Type.Integer({ minimum: 1 }),
    pricing: Type.Object(
      { perRequest: Credits, perInputToken: Credits, perOutputToken: Credits },
      { additionalProperties: false },
    ),
    asyncTasks: Type.Union([
      Type.Null(),
      Type.Object(
        {
          /** Requests whose path starts with this prefix submit a task. */
          submitPathPrefix: Type.String({ pattern: '^/' }),
          /** Top-level JSON field of the submit response that holds the task id. */
          taskIdField: Type.String({ minLength: 1 }),
          /** Path templates carrying the id, e.g. /status/{id}. */
          taskPaths: Type.Array(Type.String({ pattern: '^/.*\\{id\\}' })),
          ttlMs: Millis,
        },
        { additionalProperties: false },
      ),
    ]),
    /** Credential the gateway adds for the backend (from a Secret); the client's own key never goes upstream. */
    upstreamAuth: Type.Union([
      Type.Null(),
      Type.Object(
        { header: Type.String({ minLength: 1 }), value: Type.String({ minLength: 1 }) },
        { additionalProperties: false },
      ),
    ]),
    /** SHA-256 (hex) of the self-registration shared secret; null when registration is off. */
    registration: Type.Union([
      Type.Null(),
      Type.Object(
        { secretSha256: Type.String({ pattern: '^[0-9a-f]{64}$' }), ttlMs: Millis },
        { additionalProperties: false },
      ),
    ]),
  },
  { additionalProperties: false },
);
export type Backend = Static<typeof Backend>;

export const TenantJwt = Type.Object(
  {
    issuer: Type.String({ minLength: 1 }),
    audiences: Type.Array(Type.String({ minLength: 1 })),
    jwksUrl: Type.Optional(Type.String({ pattern: '^https?://' })),
    /** HS256 shared secret (from a Secret); present only when jwksUrl is absent. */
    hsSecret: Type.Optional(Type.String({ minLength: 1 })),
    subjectClaim: Type.String({ minLength: 1 }),
    userNameClaim: Type.String({ minLength: 1 }),
  },
  { additionalProperties: false },
);
export type TenantJwt = Static<typeof TenantJwt>;

export const Tenant = Type.Object(
  {
    id: Id,
    suspended: Type.Boolean(),
    /** Empty means every model. */
    allowedModels: Type.Array(Type.String({ minLength: 1 })),
    /** Backend ids (namespace/name); empty means every backend. */
    allowedBackends: Type.Array(Id),
    limits: RateLimits,
    quota: Type.Union([Type.Null(), Quota]),
    /** What happens when usage cannot be recorded (Postgres down, buffer full): keep serving or refuse. */
    failOpen: Type.Boolean(),
    jwt: Type.Union([Type.Null(), TenantJwt]),
  },
  { additionalProperties: false },
);
export type Tenant = Static<typeof Tenant>;

export const ApiKey = Type.Object(
  {
    id: Id,
    tenant: Id,
    /** SHA-256 of the whole key, hex. The key itself never reaches the data plane. */
    sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
    /** The first characters of the key, safe to show in logs and status. */
    prefix: Type.String({ minLength: 4, maxLength: 16 }),
    disabled: Type.Boolean(),
    expiresAt: Type.Union([Type.Null(), Type.String({ format: 'date-time' })]),
    limits: RateLimits,
    quota: Type.Union([Type.Null(), Quota]),
    allowedModels: Type.Array(Type.String({ minLength: 1 })),
    allowedCIDRs: Type.Array(Type.String({ minLength: 1 })),
  },
  { additionalProperties: false },
);
export type ApiKey = Static<typeof ApiKey>;

/** Gateway-level CORS. Preflights are answered by the gateway, without credentials, never forwarded. */
export const Cors = Type.Object(
  {
    /** Exact origins (`https://app.example.com`) or `*` for any. */
    allowedOrigins: Type.Array(Type.String({ minLength: 1 })),
    allowedMethods: Type.Array(Type.String({ pattern: '^[A-Z]+$' })),
    /** Request headers a browser may send; lower or mixed case. */
    allowedHeaders: Type.Array(Type.String({ minLength: 1 })),
    /** Response headers a browser script may read. */
    exposedHeaders: Type.Array(Type.String({ minLength: 1 })),
    allowCredentials: Type.Boolean(),
    maxAgeSeconds: Type.Integer({ minimum: 0 }),
  },
  { additionalProperties: false },
);
export type Cors = Static<typeof Cors>;

/** Limits per client address (this gateway as a whole; each replica enforces its share). */
export const ClientLimits = Type.Object(
  {
    /** Requests per minute one address may make to public routes. 0: unlimited. */
    publicRequestsPerMinute: Type.Integer({ minimum: 0 }),
    /** Failed authentications per minute before an address is refused outright. 0: unlimited. */
    authFailuresPerMinute: Type.Integer({ minimum: 0 }),
  },
  { additionalProperties: false },
);
export type ClientLimits = Static<typeof ClientLimits>;

export const Settings = Type.Object(
  {
    /** Live data-plane replicas; per-replica rate limits are the configured limit divided by this. */
    replicas: Type.Integer({ minimum: 1 }),
    /** Add X-Gpugate-Backend to responses. */
    exposeBackendHeader: Type.Boolean(),
    /** JSON bodies up to this size are peeked for their `model`; larger bodies stream untouched. */
    maxJsonPeekBytes: Type.Integer({ minimum: 0 }),
    // The three below are optional and left out when unset, so snapshots (and revisions) without
    // them are unchanged; the data plane defaults them (dataplane/admission/admission.ts).
    /** Absent: no CORS headers, and OPTIONS requests are routed like any other. */
    cors: Type.Optional(Cors),
    /** Proxies (CIDRs) whose X-Forwarded-For names the client; absent: the socket address is the client. */
    trustedProxies: Type.Optional(Type.Array(Type.String({ minLength: 1 }))),
    clientLimits: Type.Optional(ClientLimits),
  },
  { additionalProperties: false },
);
export type Settings = Static<typeof Settings>;

export const Snapshot = Type.Object(
  {
    schemaVersion: Type.Integer({ minimum: 1 }),
    /** Content hash of everything below except revision and generatedAt: equal content, equal revision. */
    revision: Type.String({ pattern: '^[0-9a-f]{64}$' }),
    generatedAt: Type.String({ format: 'date-time' }),
    settings: Settings,
    backends: Type.Array(Backend),
    tenants: Type.Array(Tenant),
    keys: Type.Array(ApiKey),
  },
  { additionalProperties: false },
);
export type Snapshot = Static<typeof Snapshot>;
