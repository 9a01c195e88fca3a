// GpuBackend: a pool of GPU inference endpoints — what it serves, where it runs, how traffic is spread.
import Type, { type Static } from 'typebox';
import {
  Conditions,
  DURATION_PATTERN,
  Duration,
  HttpUrl,
  ModelNames,
  ObjectName,
  ObservedGeneration,
  SecretKeyRef,
  StringEnum,
  StringMap,
  cel,
  type CustomObject,
  type KindDefinition,
} from './common.ts';

export const BALANCING_POLICIES = ['RoundRobin', 'LeastRequest', 'QueueAware'] as const;
export const PROTOCOLS = ['openai', 'generic'] as const;
export const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;
export const DATAPLANE_MODES = ['shared', 'sidecar'] as const;
export const ENDPOINT_SOURCES = ['static', 'pod', 'registered', 'gateway'] as const;
export const DEFAULT_GPU_RESOURCE = 'nvidia.com/gpu';

const Route = Type.Object(
  {
    pathPrefix: Type.String({
      description: 'Requests whose path starts with this prefix go to this backend; the longest prefix wins.',
      pattern: '^/',
      maxLength: 256,
    }),
    methods: Type.Optional(
      Type.Array(StringEnum(HTTP_METHODS, { description: 'An HTTP method.' }), {
        description: 'HTTP methods this route accepts. Absent or empty: every method.',
        maxItems: 7,
        'x-kubernetes-list-type': 'set',
      }),
    ),
    public: Type.Boolean({
      description:
        'Serve this route without credentials (e.g. a job-completion callback or health). Still rate-limited per client IP.',
      default: false,
    }),
    cost: Type.Optional(
      Type.Number({
        description:
          'Credits charged per request on this route, on top of token pricing (e.g. 1 for a job submit, 0 for status queries).',
        minimum: 0,
      }),
    ),
  },
  { description: 'A path prefix this backend serves.' },
);

const Endpoint = Type.Object(
  {
    url: HttpUrl('Base URL of a GPU inference server, e.g. http://10.0.3.7:8000.'),
    weight: Type.Integer({
      description: 'Relative share of traffic for weighted policies (1-1000).',
      minimum: 1,
      maximum: 1000,
      default: 1,
    }),
    disabled: Type.Boolean({
      description: 'Take this endpoint out of rotation without deleting it (drain for maintenance).',
      default: false,
    }),
  },
  { description: 'An external GPU inference endpoint.' },
);

const Toleration = Type.Object(
  {
    key: Type.Optional(Type.String({ description: 'Taint key the toleration applies to.', maxLength: 316 })),
    operator: Type.Optional(
      StringEnum(['Exists', 'Equal'] as const, { description: 'Exists or Equal (default Equal).' }),
    ),
    value: Type.Optional(
      Type.String({ description: 'Taint value to match when operator is Equal.', maxLength: 63 }),
    ),
    effect: Type.Optional(
      StringEnum(['NoSchedule', 'PreferNoSchedule', 'NoExecute'] as const, {
        description: 'Taint effect to match; absent matches every effect.',
      }),
    ),
    tolerationSeconds: Type.Optional(
      Type.Integer({
        description: 'How long a NoExecute taint is tolerated before eviction.',
        format: 'int64',
      }),
    ),
  },
  { description: 'A core/v1 Toleration.' },
);

const Quantity = Type.Unsafe<string | number>({
  'x-kubernetes-int-or-string': true,
  anyOf: [{ type: 'integer' }, { type: 'string' }],
  pattern:
    '^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$',
  description: 'A resource quantity, e.g. 500m, 2, 16Gi.',
});

const EnvVar = Type.Object(
  {
    name: Type.String({ description: 'Environment variable name.', minLength: 1, maxLength: 256 }),
    value: Type.Optional(Type.String({ description: 'Literal value.', maxLength: 32768 })),
    secretKeyRef: Type.Optional(SecretKeyRef('Take the value from a key of a Secret.', 'value')),
  },
  {
    description: 'An environment variable for the model server: a literal value or a Secret key.',
    ...cel({
      rule: 'has(self.value) != has(self.secretKeyRef)',
      message: 'set exactly one of value or secretKeyRef',
    }),
  },
);

const Deployment = Type.Object(
  {
    image: Type.String({
      description: 'Container image of the model server, e.g. vllm/vllm-openai:v0.11.0.',
      minLength: 1,
      maxLength: 1024,
    }),
    command: Type.Optional(
      Type.Array(Type.String({ description: 'An argument.', maxLength: 4096 }), {
        description: 'Entrypoint override.',
        maxItems: 64,
      }),
    ),
    args: Type.Optional(
      Type.Array(Type.String({ description: 'An argument.', maxLength: 4096 }), {
        description: 'Arguments to the entrypoint, e.g. ["--model", "meta-llama/Llama-3.1-8B-Instruct"].',
        maxItems: 128,
      }),
    ),
    env: Type.Optional(
      Type.Array(EnvVar, {
        description: 'Environment variables for the model server.',
        maxItems: 128,
        'x-kubernetes-list-type': 'map',
        'x-kubernetes-list-map-keys': ['name'],
      }),
    ),
    port: Type.Integer({
      description: 'Port the model server listens on.',
      minimum: 1,
      maximum: 65535,
      default: 8000,
    }),
    replicas: Type.Integer({
      description: 'Number of model-server pods.',
      minimum: 0,
      maximum: 1000,
      default: 1,
    }),
    gpusPerReplica: Type.Integer({
      description: 'GPUs requested (and limited) per pod, as the gpuResource extended resource.',
      minimum: 0,
      maximum: 64,
      default: 1,
    }),
    gpuResource: Type.String({
      description: 'Extended resource name of the GPU, from the device plugin.',
      default: DEFAULT_GPU_RESOURCE,
      minLength: 1,
      maxLength: 253,
    }),
    nodeSelector: Type.Optional(StringMap('Node labels the pods must land on, e.g. nvidia.com/gpu.product.')),
    tolerations: Type.Optional(
      Type.Array(Toleration, {
        description:
          'Tolerations for the pods. Absent: tolerate the nvidia.com/gpu NoSchedule taint that GPU nodes usually carry.',
        maxItems: 32,
      }),
    ),
    resources: Type.Optional(
      Type.Object(
        {
          requests: Type.Optional(
            Type.Unsafe<Record<string, string | number>>({
              type: 'object',
              additionalProperties: Quantity,
              description:
                'Minimum resources (cpu, memory, ...). The GPU request is set from gpusPerReplica.',
            }),
          ),
          limits: Type.Optional(
            Type.Unsafe<Record<string, string | number>>({
              type: 'object',
              additionalProperties: Quantity,
              description: 'Maximum resources. The GPU limit is set from gpusPerReplica.',
            }),
          ),
        },
        { description: 'CPU and memory for the model-server container.' },
      ),
    ),
    dataplane: StringEnum(DATAPLANE_MODES, {
      description:
        'shared: traffic goes through the shared gateway; sidecar: a gpugate data plane runs in each pod in front of the model server.',
      default: 'shared',
    }),
    healthPath: Type.String({
      description: 'HTTP path for the readiness probe.',
      pattern: '^/',
      maxLength: 256,
      default: '/health',
    }),
    sidecarTLS: Type.Optional(
      Type.Object(
        {
          secretName: ObjectName(
            'A kubernetes.io/tls Secret (tls.crt, tls.key) in this namespace; the sidecar serves HTTPS with it and re-reads it when it is renewed.',
            'Secret',
          ),
        },
        { description: "HTTPS on the sidecar data plane's public port (its admin port stays HTTP)." },
      ),
    ),
  },
  {
    description: 'Run the model server as a Deployment managed by gpugate, scheduled on GPU nodes.',
    ...cel({
      rule: "!has(self.sidecarTLS) || self.dataplane == 'sidecar'",
      message:
        'sidecarTLS needs dataplane: sidecar (the shared data plane takes its certificate from the chart value dataplane.tls.secretName)',
      fieldPath: '.sidecarTLS',
    }),
  },
);

const Registration = Type.Object(
  {
    secretRef: SecretKeyRef(
      'Secret holding the shared secret that servers present when they register.',
      'secret',
    ),
    ttl: Duration('Registered endpoints that do not renew within this time are dropped.', '60s'),
  },
  { description: 'Let external GPU servers register and unregister themselves with a shared secret.' },
);

const Balancing = Type.Object(
  {
    policy: StringEnum(BALANCING_POLICIES, {
      description:
        "RoundRobin: smooth weighted rotation. LeastRequest: fewest in-flight requests per weight (power of two choices). QueueAware: scores endpoints by the model servers' waiting queue, running requests and KV-cache use (vLLM metrics), falling back to LeastRequest when metrics are stale.",
      default: 'LeastRequest',
    }),
    maxInflightPerEndpoint: Type.Integer({
      description:
        'Requests one endpoint may have in flight from one gateway replica; more wait in a queue. 0: unlimited.',
      minimum: 0,
      default: 0,
    }),
    maxQueue: Type.Integer({
      description: 'Requests that may wait for a free endpoint per replica before new ones get 503.',
      minimum: 0,
      default: 100,
    }),
    queueTimeout: Duration(
      'How long a request waits for a free endpoint before 503 with Retry-After.',
      '30s',
    ),
    metricsPath: Type.String({
      description: "Path of the model server's Prometheus metrics, scraped by QueueAware.",
      pattern: '^/',
      maxLength: 256,
      default: '/metrics',
    }),
  },
  { description: 'How traffic is spread across endpoints.' },
);

const HealthCheck = Type.Object(
  {
    disabled: Type.Boolean({
      description: 'Turn active health checks off (passive ejection still applies).',
      default: false,
    }),
    path: Type.String({
      description: 'HTTP path probed with GET; 2xx is healthy.',
      pattern: '^/',
      maxLength: 256,
      default: '/health',
    }),
    interval: Duration('Time between probes.', '10s'),
    timeout: Duration('Probe timeout.', '2s'),
    healthyThreshold: Type.Integer({
      description: 'Consecutive successes to mark an endpoint healthy.',
      minimum: 1,
      maximum: 100,
      default: 1,
    }),
    unhealthyThreshold: Type.Integer({
      description: 'Consecutive failures to mark an endpoint unhealthy.',
      minimum: 1,
      maximum: 100,
      default: 3,
    }),
  },
  { description: 'Active health checks of every endpoint.' },
);

const Retries = Type.Object(
  {
    attempts: Type.Integer({
      description:
        'Further attempts on a different endpoint after a connection failure or a retryable status. Only before any byte reached the client and only for bodies that can be replayed.',
      minimum: 0,
      maximum: 10,
      default: 1,
    }),
    retryOnStatus: Type.Array(Type.Integer({ description: 'An HTTP status.', minimum: 500, maximum: 599 }), {
      description: 'Upstream statuses that are retried.',
      maxItems: 10,
      default: [502, 503],
      'x-kubernetes-list-type': 'set',
    }),
  },
  { description: 'Retries on another endpoint.' },
);

const Timeouts = Type.Object(
  {
    connect: Duration('Time to open a connection to an endpoint.', '5s'),
    firstByte: Duration(
      'Time from sending the request to the first response byte (includes queueing and prefill on the GPU).',
      '120s',
    ),
    total: Duration('Time for the whole exchange, streaming included.', '5m'),
  },
  {
    description: 'Upstream timeouts; a timeout answers 504.',
    ...cel(
      {
        // A malformed duration has its own message; comparing it would only add a conversion error.
        rule: `!has(self.connect) || !has(self.total) || !self.connect.matches(r'${DURATION_PATTERN}') || !self.total.matches(r'${DURATION_PATTERN}') || duration(self.connect) <= duration(self.total)`,
        message: 'connect must not be longer than total',
      },
      {
        rule: `!has(self.firstByte) || !has(self.total) || !self.firstByte.matches(r'${DURATION_PATTERN}') || !self.total.matches(r'${DURATION_PATTERN}') || duration(self.firstByte) <= duration(self.total)`,
        message: 'firstByte must not be longer than total',
      },
    ),
  },
);

const Pricing = Type.Object(
  {
    perRequest: Type.Number({ description: 'Credits per request.', minimum: 0, default: 0 }),
    perInputToken: Type.Number({ description: 'Credits per input (prompt) token.', minimum: 0, default: 0 }),
    perOutputToken: Type.Number({
      description: 'Credits per output (generated) token.',
      minimum: 0,
      default: 0,
    }),
  },
  { description: 'What a request costs in credits, charged against tenant and key quotas.' },
);

const AsyncTasks = Type.Object(
  {
    submitPathPrefix: Type.String({
      description: 'Requests under this path prefix submit a task; the task id is read from the response.',
      pattern: '^/',
      maxLength: 256,
    }),
    taskIdField: Type.String({
      description: 'Top-level JSON field of the submit response holding the task id.',
      minLength: 1,
      maxLength: 128,
      default: 'task_id',
    }),
    taskPaths: Type.Array(
      Type.String({ description: 'A path template with {id}.', pattern: '^/.*\\{id\\}', maxLength: 256 }),
      {
        description:
          'Paths that carry the task id, e.g. /status/{id} and /download/{id}; they go to the endpoint that accepted the task, for the submitting tenant only.',
        minItems: 1,
        maxItems: 16,
      },
    ),
    ttl: Duration('How long a task id stays routable after submission.', '24h'),
  },
  { description: 'Asynchronous GPU jobs (image enhancement and the like) with task affinity.' },
);

const UpstreamAuth = Type.Object(
  {
    secretRef: SecretKeyRef('Secret holding the credential the backend expects.', 'token'),
    header: Type.String({
      description: 'Header that carries it.',
      minLength: 1,
      maxLength: 256,
      default: 'Authorization',
    }),
    scheme: Type.String({
      description: 'Prefix before the credential, e.g. Bearer; empty for none.',
      maxLength: 64,
      default: 'Bearer',
    }),
  },
  { description: "A credential the gateway adds for the backend. Clients' own keys are never forwarded." },
);

export const GpuBackendSpec = Type.Object(
  {
    models: Type.Optional({
      ...ModelNames('Model names this backend serves; ["*"] serves any model (the default).'),
      default: ['*'],
    }),
    routes: Type.Optional(
      Type.Array(Route, {
        description: 'Path prefixes this backend serves. Absent: /v1/ (the OpenAI API).',
        maxItems: 64,
        'x-kubernetes-list-type': 'map',
        'x-kubernetes-list-map-keys': ['pathPrefix'],
      }),
    ),
    protocol: StringEnum(PROTOCOLS, {
      description:
        'openai: token usage is read from responses (and streams) for metering. generic: requests and bytes only.',
      default: 'openai',
    }),
    endpoints: Type.Optional(
      Type.Array(Endpoint, {
        description: 'External endpoints (servers gpugate does not run).',
        maxItems: 256,
        'x-kubernetes-list-type': 'map',
        'x-kubernetes-list-map-keys': ['url'],
      }),
    ),
    deployment: Type.Optional(Deployment),
    registration: Type.Optional(Registration),
    balancing: Type.Optional(Balancing),
    healthCheck: Type.Optional(HealthCheck),
    retries: Type.Optional(Retries),
    timeouts: Type.Optional(Timeouts),
    maxRequestBytes: Type.Integer({
      description:
        'Largest request body accepted; larger ones get 413 before anything is forwarded. Default 100 MiB.',
      minimum: 1,
      default: 104857600,
    }),
    pricing: Type.Optional(Pricing),
    asyncTasks: Type.Optional(AsyncTasks),
    upstreamAuth: Type.Optional(UpstreamAuth),
  },
  {
    description: 'Desired state of a GpuBackend.',
    ...cel(
      {
        rule: '(has(self.endpoints) && size(self.endpoints) > 0) || has(self.deployment) || has(self.registration)',
        message: 'a GpuBackend needs at least one of endpoints, deployment or registration',
      },
      {
        rule: "!has(self.models) || !('*' in self.models) || size(self.models) == 1",
        message: "'*' serves every model and cannot be combined with model names",
        fieldPath: '.models',
      },
    ),
  },
);
export type GpuBackendSpec = Static<typeof GpuBackendSpec>;

const EndpointStatus = Type.Object(
  {
    url: Type.String({ description: 'Endpoint URL.', maxLength: 2048 }),
    source: StringEnum(ENDPOINT_SOURCES, {
      description:
        'static (spec.endpoints), pod (managed deployment), registered (self-registration) or gateway (another gpugate upstream).',
    }),
    ready: Type.Boolean({ description: 'Whether the endpoint receives traffic.' }),
    reason: Type.Optional(Type.String({ description: 'Why it is not ready.', maxLength: 1024 })),
  },
  { description: 'One endpoint as the operator sees it.' },
);

export const GpuBackendStatus = Type.Object(
  {
    observedGeneration: Type.Optional(ObservedGeneration),
    conditions: Type.Optional(Conditions),
    endpoints: Type.Optional(
      Type.Array(EndpointStatus, {
        description: 'Every endpoint with its readiness and source.',
        maxItems: 1024,
      }),
    ),
    readyEndpoints: Type.Optional(
      Type.String({ description: 'Ready over total endpoints, e.g. 3/4.', maxLength: 32 }),
    ),
    modelList: Type.Optional(
      Type.String({ description: 'The served models, comma-separated, for kubectl get.', maxLength: 4096 }),
    ),
  },
  { description: 'Observed state of a GpuBackend.' },
);
export type GpuBackendStatus = Static<typeof GpuBackendStatus>;

export type GpuBackend = CustomObject<'GpuBackend', GpuBackendSpec, GpuBackendStatus>;

export const GpuBackendDefinition: KindDefinition = {
  kind: 'GpuBackend',
  plural: 'gpubackends',
  singular: 'gpubackend',
  shortNames: ['gb'],
  description:
    'GpuBackend is a pool of GPU inference endpoints that gpugate routes to: external URLs, a model-server Deployment it manages on GPU nodes, or servers that register themselves.',
  spec: GpuBackendSpec,
  status: GpuBackendStatus,
  printerColumns: [
    {
      name: 'Ready',
      type: 'string',
      jsonPath: '.status.conditions[?(@.type=="Ready")].status',
      description: 'Whether the backend serves traffic.',
    },
    {
      name: 'Endpoints',
      type: 'string',
      jsonPath: '.status.readyEndpoints',
      description: 'Ready over total endpoints.',
    },
    { name: 'Models', type: 'string', jsonPath: '.status.modelList', description: 'Served models.' },
    {
      name: 'Policy',
      type: 'string',
      jsonPath: '.spec.balancing.policy',
      description: 'Balancing policy.',
      priority: 1,
    },
    {
      name: 'Age',
      type: 'date',
      jsonPath: '.metadata.creationTimestamp',
      description: 'Time since creation.',
    },
  ],
};
