// Starts and stops a real Kubernetes control plane on loopback for tests: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and kwok (fake kubelets), built by test/cluster/build.sh.
//
// Everything of one cluster lives in its run folder ($GPUGATE_CACHE/clusters/<name>): certificates, the
// service-account signing key, kubeconfigs, etcd's data, one log per component and cluster.json (ports and
// process ids), so `stopCluster(dir)` works from any process, and a cluster whose owner died is found and
// stopped the next time one starts. Every port is picked free at start, so clusters can run side by side.
//
// Identities (x509 client certificates signed by the cluster's CA, checked by --client-ca-file):
//   admin                 CN=gpugate-admin, O=system:masters   -> <dir>/kubeconfig (what tests use)
//   controller-manager    CN=system:kube-controller-manager    (bootstrap RBAC role; controllers then use
//                                                              their own service accounts)
//   scheduler             CN=system:kube-scheduler             (bootstrap RBAC role)
//   kwok                  CN=kwok-controller, O=system:masters (it stands in for every kubelet)
// The operator does not get a certificate: like a pod, it gets a real service-account token through the
// TokenRequest API (see harness.ts kubeconfigForServiceAccount), so RBAC is exercised exactly as in a cluster.
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { createServer } from 'node:net';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));

export interface Versions {
  kubernetes: string;
  etcd: string;
  kwok: string;
  helm: string;
}

export interface Binaries {
  kubeApiserver: string;
  kubeControllerManager: string;
  kubeScheduler: string;
  kubectl: string;
  etcd: string;
  kwok: string;
  helm: string;
  /** kwok's stock Stage definitions (node initialize and heartbeat, pod ready/complete/delete). */
  kwokStages: string;
}

/** What cluster.json in a run folder records; also what the test harness hands to suites. */
export interface ClusterInfo {
  name: string;
  dir: string;
  kubeconfig: string;
  server: string;
  kubernetesVersion: string;
  kubectl: string;
  processes: { component: string; pid: number }[];
}

function cacheDir(): string {
  return process.env.GPUGATE_CACHE ?? join(homedir(), '.cache', 'gpugate');
}

/** Reads test/cluster/versions.env, the one place where the tier's versions are pinned. */
export function readVersions(): Versions {
  const values = new Map<string, string>();
  for (const line of readFileSync(join(here, 'versions.env'), 'utf8').split('\n')) {
    const match = /^([A-Z_]+)=(\S+)$/.exec(line.trim());
    if (match) values.set(match[1]!, match[2]!);
  }
  const get = (key: string): string => {
    const value = values.get(key);
    if (!value) throw new Error(`test/cluster/versions.env has no ${key}=`);
    return value;
  };
  return {
    kubernetes: get('KUBERNETES_VERSION'),
    etcd: get('ETCD_VERSION'),
    kwok: get('KWOK_VERSION'),
    helm: get('HELM_VERSION'),
  };
}

/** Paths of the binaries build.sh makes (the same layout as its --print-env). */
export function binaries(versions = readVersions()): Binaries {
  const cache = cacheDir();
  const k8s = join(cache, 'k8s', versions.kubernetes, 'bin');
  const kwok = join(cache, 'kwok', versions.kwok);
  return {
    kubeApiserver: join(k8s, 'kube-apiserver'),
    kubeControllerManager: join(k8s, 'kube-controller-manager'),
    kubeScheduler: join(k8s, 'kube-scheduler'),
    kubectl: join(k8s, 'kubectl'),
    etcd: join(cache, 'etcd', versions.etcd, 'bin', 'etcd'),
    kwok: join(kwok, 'bin', 'kwok'),
    helm: join(cache, 'helm', versions.helm, 'bin', 'helm'),
    kwokStages: join(kwok, 'stages.yaml'),
  };
}

/** The fake nodes every cluster gets. GPU nodes carry the labels and taint of NVIDIA's device plugin and GPU
 * feature discovery, so scheduling works as on a real GPU pool. */
export interface FakeNode {
  name: string;
  labels: Record<string, string>;
  taints: { key: string; value: string; effect: string }[];
  capacity: Record<string, string>;
}

const gpuTaint = { key: 'nvidia.com/gpu', value: 'present', effect: 'NoSchedule' };

function gpuNode(name: string, product: string, gpus: number, memoryMiB: number): FakeNode {
  return {
    name,
    labels: {
      'nvidia.com/gpu.present': 'true',
      'nvidia.com/gpu.product': product,
      'nvidia.com/gpu.count': String(gpus),
      'nvidia.com/gpu.memory': String(memoryMiB),
    },
    taints: [gpuTaint],
    capacity: { cpu: '96', memory: '1Ti', pods: '110', 'nvidia.com/gpu': String(gpus) },
  };
}

export const fakeNodes: FakeNode[] = [
  gpuNode('gpu-a100-0', 'NVIDIA-A100-SXM4-80GB', 4, 81920),
  gpuNode('gpu-a100-1', 'NVIDIA-A100-SXM4-80GB', 4, 81920),
  gpuNode('gpu-h100-0', 'NVIDIA-H100-80GB-HBM3', 8, 81920),
  { name: 'cpu-0', labels: {}, taints: [], capacity: { cpu: '32', memory: '128Gi', pods: '110' } },
  { name: 'cpu-1', labels: {}, taints: [], capacity: { cpu: '32', memory: '128Gi', pods: '110' } },
];

export interface StartOptions {
  /** Run folder name under $GPUGATE_CACHE/clusters. */
  name: string;
  /** Keep the processes running after this Node process exits (for `make cluster-up`). */
  detached?: boolean;
  /** Progress lines; silent when absent. */
  log?: (line: string) => void;
  /** Upper bound for the whole start; 120 s by default. */
  timeoutMs?: number;
}

export function clustersDir(): string {
  return join(cacheDir(), 'clusters');
}

/** Starts a cluster and returns once the API server is ready, the controllers and the scheduler are
 * healthy, every fake node is Ready and the default service account exists. */
export async function startCluster(options: StartOptions): Promise<ClusterInfo> {
  const log = options.log ?? (() => {});
  const deadline = Date.now() + (options.timeoutMs ?? 120_000);
  const versions = readVersions();
  const bin = binaries(versions);
  for (const [component, path] of Object.entries(bin)) {
    if (!existsSync(path)) throw new Error(`${component} is missing at ${path}: run \`make cluster-build\``);
  }
  await requireOpenssl();
  await stopOrphanedClusters(log);

  const dir = join(clustersDir(), options.name);
  if (existsSync(join(dir, 'cluster.json'))) await stopCluster(dir);
  rmSync(dir, { recursive: true, force: true });
  for (const sub of ['pki', 'logs', 'etcd']) mkdirSync(join(dir, sub), { recursive: true });

  const [etcdClient, etcdPeer, apiserver, controllerManager, scheduler, kwok] = await freePorts(6);
  const server = `https://127.0.0.1:${apiserver}`;
  const info: ClusterInfo = {
    name: options.name,
    dir,
    kubeconfig: join(dir, 'kubeconfig'),
    server,
    kubernetesVersion: versions.kubernetes,
    kubectl: bin.kubectl,
    processes: [],
  };
  const record = (): void => writeFileSync(join(dir, 'cluster.json'), JSON.stringify(info, null, 2) + '\n');
  record();
  // A cluster that lives only as long as this process says so, for the next start's sweep of orphans.
  if (!options.detached) writeFileSync(join(dir, 'owner.pid'), String(process.pid));

  log('certificates and service-account keys (openssl)');
  const pki = await makePki(join(dir, 'pki'));
  writeKubeconfig(info.kubeconfig, server, pki.ca.cert, pki.clients.admin, 'gpugate-admin');
  const kubeconfigs = {
    controllerManager: join(dir, 'controller-manager.kubeconfig'),
    scheduler: join(dir, 'scheduler.kubeconfig'),
    kwok: join(dir, 'kwok.kubeconfig'),
  };
  writeKubeconfig(kubeconfigs.controllerManager, server, pki.ca.cert, pki.clients.controllerManager, 'cm');
  writeKubeconfig(kubeconfigs.scheduler, server, pki.ca.cert, pki.clients.scheduler, 'scheduler');
  writeKubeconfig(kubeconfigs.kwok, server, pki.ca.cert, pki.clients.kwok, 'kwok');

  const launch = (component: string, command: string, args: string[]): void => {
    const out = openSync(join(dir, 'logs', `${component}.log`), 'a');
    const child = spawn(command, args, { cwd: dir, detached: true, stdio: ['ignore', out, out] });
    if (child.pid === undefined) throw new Error(`could not start ${component} (${command})`);
    info.processes.push({ component, pid: child.pid });
    record();
    child.once('exit', (code, signal) => {
      exited.set(component, `${component} exited (code ${code}, signal ${signal})`);
    });
    if (options.detached) child.unref();
  };
  const exited = new Map<string, string>();
  const waitFor = async (what: string, check: () => Promise<boolean>): Promise<void> => {
    for (;;) {
      if (exited.size > 0) {
        const [component, message] = [...exited.entries()][0]!;
        throw new Error(
          `${message} while waiting for ${what}; its log:\n${tail(join(dir, 'logs', `${component}.log`))}`,
        );
      }
      if (await check().catch(() => false)) return;
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for ${what}; logs are in ${join(dir, 'logs')}`);
      await sleep(250);
    }
  };

  try {
    log(`etcd ${versions.etcd} on 127.0.0.1:${etcdClient}`);
    const etcdUrl = `http://127.0.0.1:${etcdClient}`;
    const peerUrl = `http://127.0.0.1:${etcdPeer}`;
    launch('etcd', bin.etcd, [
      '--name=gpugate',
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=gpugate=${peerUrl}`,
      // A test cluster's data is thrown away; fsync only slows every write down.
      '--unsafe-no-fsync=true',
      '--log-level=warn',
    ]);
    await waitFor('etcd /health', async () =>
      (await httpGet(`${etcdUrl}/health`)).includes('"health":"true"'),
    );

    log(`kube-apiserver ${versions.kubernetes} on ${server}`);
    launch('kube-apiserver', bin.kubeApiserver, [
      `--etcd-servers=${etcdUrl}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      `--secure-port=${apiserver}`,
      `--tls-cert-file=${pki.serving.cert}`,
      `--tls-private-key-file=${pki.serving.key}`,
      `--client-ca-file=${pki.ca.cert}`,
      '--authorization-mode=Node,RBAC',
      '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
      `--service-account-key-file=${pki.serviceAccount.publicKey}`,
      `--service-account-signing-key-file=${pki.serviceAccount.privateKey}`,
      '--service-cluster-ip-range=10.96.0.0/16',
      `--requestheader-client-ca-file=${pki.frontProxy.ca}`,
      '--requestheader-allowed-names=front-proxy-client',
      '--requestheader-username-headers=X-Remote-User',
      '--requestheader-group-headers=X-Remote-Group',
      '--requestheader-extra-headers-prefix=X-Remote-Extra-',
      `--proxy-client-cert-file=${pki.frontProxy.client.cert}`,
      `--proxy-client-key-file=${pki.frontProxy.client.key}`,
      '--allow-privileged=true',
      '--profiling=false',
    ]);
    const admin = { ca: pki.ca.cert, cert: pki.clients.admin.cert, key: pki.clients.admin.key };
    await waitFor('kube-apiserver /readyz', async () => (await httpsGet(`${server}/readyz`, admin)) === 'ok');

    log('kube-controller-manager and kube-scheduler');
    launch('kube-controller-manager', bin.kubeControllerManager, [
      `--kubeconfig=${kubeconfigs.controllerManager}`,
      `--authentication-kubeconfig=${kubeconfigs.controllerManager}`,
      `--authorization-kubeconfig=${kubeconfigs.controllerManager}`,
      '--bind-address=127.0.0.1',
      `--secure-port=${controllerManager}`,
      `--tls-cert-file=${pki.serving.cert}`,
      `--tls-private-key-file=${pki.serving.key}`,
      `--service-account-private-key-file=${pki.serviceAccount.privateKey}`,
      `--root-ca-file=${pki.ca.cert}`,
      '--use-service-account-credentials=true',
      '--cluster-name=gpugate-test',
      '--leader-elect=false',
      '--profiling=false',
    ]);
    const schedulerConfig = join(dir, 'scheduler.yaml');
    writeFileSync(
      schedulerConfig,
      [
        'apiVersion: kubescheduler.config.k8s.io/v1',
        'kind: KubeSchedulerConfiguration',
        'clientConnection:',
        `  kubeconfig: ${JSON.stringify(kubeconfigs.scheduler)}`,
        'leaderElection:',
        '  leaderElect: false',
        '',
      ].join('\n'),
    );
    launch('kube-scheduler', bin.kubeScheduler, [
      `--config=${schedulerConfig}`,
      `--authentication-kubeconfig=${kubeconfigs.scheduler}`,
      `--authorization-kubeconfig=${kubeconfigs.scheduler}`,
      '--bind-address=127.0.0.1',
      `--secure-port=${scheduler}`,
      `--tls-cert-file=${pki.serving.cert}`,
      `--tls-private-key-file=${pki.serving.key}`,
    ]);

    log('kwok (fake kubelets)');
    const kwokConfig = join(dir, 'kwok.yaml');
    // Only Stage objects: with a KwokConfiguration document of its own, kwok 0.8 skips its option defaults.
    writeFileSync(kwokConfig, readFileSync(bin.kwokStages, 'utf8'));
    launch('kwok', bin.kwok, [
      `--kubeconfig=${kubeconfigs.kwok}`,
      `--config=${kwokConfig}`,
      '--manage-all-nodes=false',
      `--manage-nodes-with-annotation-selector=${kwokNodeAnnotation}=fake`,
      '--node-ip=127.0.0.1',
      `--node-port=${kwok}`,
      `--server-address=127.0.0.1:${kwok}`,
      `--tls-cert-file=${pki.serving.cert}`,
      `--tls-private-key-file=${pki.serving.key}`,
      '--node-lease-duration-seconds=40',
    ]);

    const probe = { ca: pki.ca.cert };
    await waitFor('kube-controller-manager /healthz', async () => {
      return (await httpsGet(`https://127.0.0.1:${controllerManager}/healthz`, probe)) === 'ok';
    });
    await waitFor('kube-scheduler /healthz', async () => {
      return (await httpsGet(`https://127.0.0.1:${scheduler}/healthz`, probe)) === 'ok';
    });

    log(`nodes: ${fakeNodes.map((node) => node.name).join(', ')}`);
    await runKubectl(bin.kubectl, info.kubeconfig, ['apply', '--server-side', '-f', '-'], nodeManifests());
    await waitFor('every fake node Ready', async () => {
      const out = await runKubectl(bin.kubectl, info.kubeconfig, [
        'get',
        'nodes',
        '-o',
        'jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
      ]);
      const ready = out.split('\n').filter((line) => line.endsWith('=True')).length;
      return ready === fakeNodes.length;
    });
    await waitFor('the default service account (made by the controller manager)', async () => {
      await runKubectl(bin.kubectl, info.kubeconfig, ['get', 'serviceaccount', 'default', '-n', 'default']);
      return true;
    });
  } catch (error) {
    await stopCluster(dir, { keepFolder: true });
    throw error;
  }
  log(`ready: KUBECONFIG=${info.kubeconfig}`);
  return info;
}

/** Stops every process of the cluster in `dir`, clients first and etcd last, and removes the folder unless
 * asked to keep it (a failed start keeps it for its logs). */
export async function stopCluster(dir: string, options: { keepFolder?: boolean } = {}): Promise<void> {
  const file = join(dir, 'cluster.json');
  if (existsSync(file)) {
    const info = JSON.parse(readFileSync(file, 'utf8')) as ClusterInfo;
    for (const { component, pid } of [...info.processes].reverse()) {
      if (!ownsProcess(pid, dir)) continue;
      // kube-apiserver drains watches for up to a minute on SIGTERM; nothing in a test cluster is worth that.
      const graceMs = component === 'kube-apiserver' ? 0 : 5_000;
      // A zombie's command line reads empty, so `running` is false from the moment the process has exited.
      const running = (): boolean => ownsProcess(pid, dir);
      if (graceMs > 0) signalGroup(pid, 'SIGTERM');
      let deadline = Date.now() + graceMs;
      while (running() && Date.now() < deadline) await sleep(50);
      if (running()) signalGroup(pid, 'SIGKILL');
      deadline = Date.now() + 5_000;
      while (running() && Date.now() < deadline) await sleep(20);
    }
  }
  if (!options.keepFolder) rmSync(dir, { recursive: true, force: true });
}

/** Synchronous last resort for process exit handlers: SIGKILL every process of the cluster. */
export function killClusterNow(info: ClusterInfo): void {
  for (const { pid } of info.processes) if (ownsProcess(pid, info.dir)) signalGroup(pid, 'SIGKILL');
  rmSync(info.dir, { recursive: true, force: true });
}

/** Clusters started without `detached` record the pid of the process that owns them in owner.pid; when that
 * process is gone (a crashed or killed run), its cluster is stopped here instead of leaking. */
async function stopOrphanedClusters(log: (line: string) => void): Promise<void> {
  if (!existsSync(clustersDir())) return;
  for (const name of readdirSync(clustersDir())) {
    const dir = join(clustersDir(), name);
    const owner = join(dir, 'owner.pid');
    if (!existsSync(owner)) continue;
    const pid = Number(readFileSync(owner, 'utf8'));
    if (pid !== process.pid && !isAlive(pid)) {
      log(`stopping cluster ${name}, left behind by process ${pid}`);
      await stopCluster(dir);
    }
  }
}

const kwokNodeAnnotation = 'kwok.x-k8s.io/node';

function nodeManifests(): string {
  const nodes = fakeNodes.map((node) => ({
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name: node.name,
      annotations: { [kwokNodeAnnotation]: 'fake', 'node.alpha.kubernetes.io/ttl': '0' },
      labels: {
        'kubernetes.io/arch': 'amd64',
        'kubernetes.io/os': 'linux',
        'kubernetes.io/hostname': node.name,
        type: 'kwok',
        ...node.labels,
      },
    },
    spec: { taints: node.taints },
    status: { capacity: node.capacity, allocatable: node.capacity },
  }));
  return JSON.stringify({ apiVersion: 'v1', kind: 'List', items: nodes });
}

export async function runKubectl(
  kubectl: string,
  kubeconfig: string,
  args: string[],
  input?: string,
): Promise<string> {
  const child = spawn(kubectl, [`--kubeconfig=${kubeconfig}`, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  // kubectl may exit (a bad flag, an API error) before it has read its input: writing to the closed pipe
  // then fails with EPIPE on stdin, which without a listener is an uncaught exception that fails the whole
  // run. It belongs to this command's result instead.
  let stdinError: Error | undefined;
  child.stdin.on('error', (err) => (stdinError = err));
  child.stdin.end(input ?? '');
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  let code: number | null;
  try {
    [code] = (await once(child, 'close')) as [number | null];
  } finally {
    clearTimeout(timer);
  }
  const command = `kubectl ${args.join(' ')}`;
  if (code !== 0) {
    const writeFailure = stdinError ? ` (writing its input: ${stdinError.message})` : '';
    throw new Error(`${command} failed (exit ${code})${writeFailure}: ${stderr.trim() || stdout.trim()}`);
  }
  if (stdinError && input) {
    throw new Error(
      `${command} exited 0 without reading its input (${stdinError.message}): ${stdout.trim()}`,
    );
  }
  return stdout;
}

interface KeyPair {
  cert: string;
  key: string;
}

interface Pki {
  ca: KeyPair;
  serving: KeyPair;
  serviceAccount: { privateKey: string; publicKey: string };
  frontProxy: { ca: string; client: KeyPair };
  clients: Record<'admin' | 'controllerManager' | 'scheduler' | 'kwok', KeyPair>;
}

async function requireOpenssl(): Promise<void> {
  try {
    await execFileAsync('openssl', ['version']);
  } catch {
    throw new Error('openssl is needed to make the cluster certificates: apt-get install -y openssl');
  }
}

async function openssl(dir: string, args: string[]): Promise<void> {
  await execFileAsync('openssl', args, { cwd: dir, timeout: 30_000 });
}

async function makePki(dir: string): Promise<Pki> {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl(
    dir,
    ['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '3650'].concat([
      '-subj',
      '/CN=gpugate-test-ca',
    ]),
  );
  const issue = async (name: string, subject: string, extensions: string[]): Promise<KeyPair> => {
    await openssl(
      dir,
      ['req', '-new', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject].concat(
        extensions.flatMap((extension) => ['-addext', extension]),
      ),
    );
    await openssl(
      dir,
      ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key'].concat([
        '-CAcreateserial',
        '-days',
        '365',
        '-copy_extensions',
        'copyall',
        '-out',
        `${name}.crt`,
      ]),
    );
    return { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  };
  const client = (name: string, subject: string): Promise<KeyPair> =>
    issue(name, subject, ['keyUsage=critical,digitalSignature', 'extendedKeyUsage=clientAuth']);
  const serving = await issue('serving', '/CN=kube-apiserver', [
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth',
    'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,' +
      'DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local',
  ]);
  const clients = {
    admin: await client('admin', '/O=system:masters/CN=gpugate-admin'),
    controllerManager: await client('controller-manager', '/CN=system:kube-controller-manager'),
    scheduler: await client('scheduler', '/CN=system:kube-scheduler'),
    kwok: await client('kwok', '/O=system:masters/CN=kwok-controller'),
  };
  // The aggregation layer's own CA and the client the API server presents to extension API servers; with it
  // the API server publishes the requestheader CA that the controller manager and scheduler expect to find.
  await openssl(
    dir,
    ['req', '-x509', ...ec, '-keyout', 'front-proxy-ca.key', '-out', 'front-proxy-ca.crt'].concat([
      '-days',
      '3650',
      '-subj',
      '/CN=gpugate-test-front-proxy-ca',
    ]),
  );
  await openssl(
    dir,
    ['req', '-new', ...ec, '-keyout', 'front-proxy-client.key', '-out', 'front-proxy-client.csr'].concat([
      '-subj',
      '/CN=front-proxy-client',
      '-addext',
      'extendedKeyUsage=clientAuth',
    ]),
  );
  await openssl(
    dir,
    ['x509', '-req', '-in', 'front-proxy-client.csr', '-CA', 'front-proxy-ca.crt']
      .concat([
        '-CAkey',
        'front-proxy-ca.key',
        '-CAcreateserial',
        '-days',
        '365',
        '-copy_extensions',
        'copyall',
      ])
      .concat(['-out', 'front-proxy-client.crt']),
  );
  await openssl(dir, ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'sa.key']);
  await openssl(dir, ['pkey', '-in', 'sa.key', '-pubout', '-out', 'sa.pub']);
  return {
    ca: { cert: join(dir, 'ca.crt'), key: join(dir, 'ca.key') },
    serving,
    serviceAccount: { privateKey: join(dir, 'sa.key'), publicKey: join(dir, 'sa.pub') },
    frontProxy: {
      ca: join(dir, 'front-proxy-ca.crt'),
      client: { cert: join(dir, 'front-proxy-client.crt'), key: join(dir, 'front-proxy-client.key') },
    },
    clients,
  };
}

function base64File(path: string): string {
  return readFileSync(path).toString('base64');
}

/** Writes a kubeconfig with every credential embedded, so it can be copied or read by any client. */
export function writeKubeconfig(
  path: string,
  server: string,
  caCert: string,
  user: KeyPair | { token: string },
  userName: string,
): void {
  const credentials =
    'token' in user
      ? [`    token: ${user.token}`]
      : [
          `    client-certificate-data: ${base64File(user.cert)}`,
          `    client-key-data: ${base64File(user.key)}`,
        ];
  const lines = [
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    '- name: gpugate-test',
    '  cluster:',
    `    server: ${server}`,
    `    certificate-authority-data: ${base64File(caCert)}`,
    'users:',
    `- name: ${userName}`,
    '  user:',
    ...credentials,
    'contexts:',
    `- name: ${userName}@gpugate-test`,
    '  context:',
    '    cluster: gpugate-test',
    `    user: ${userName}`,
    `current-context: ${userName}@gpugate-test`,
    '',
  ];
  writeFileSync(path, lines.join('\n'), { mode: 0o600 });
}

async function freePorts(count: number): Promise<number[]> {
  // Hold every listener open until all are picked, so the same port is never handed out twice.
  const servers = await Promise.all(
    Array.from({ length: count }, async () => {
      const server = createServer();
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      return server;
    }),
  );
  const ports = servers.map((server) => {
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('no port');
    return address.port;
  });
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  return ports;
}

async function httpGet(url: string): Promise<string> {
  const response = await fetch(url, { signal: AbortSignal.timeout(2_000) });
  return response.text();
}

function httpsGet(url: string, tls: { ca: string; cert?: string; key?: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        ca: readFileSync(tls.ca),
        ...(tls.cert && tls.key ? { cert: readFileSync(tls.cert), key: readFileSync(tls.key) } : {}),
        timeout: 2_000,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve(res.statusCode === 200 ? body : `HTTP ${res.statusCode}: ${body}`));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

/** A pid belongs to this cluster only when its command line names the run folder; a recycled pid does not. */
function ownsProcess(pid: number, dir: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir);
  } catch {
    return false;
  }
}

/** Alive and not a zombie: a killed owner can stay a zombie for a while when its parent is slow to reap it. */
function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

function tail(path: string, lines = 30): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
