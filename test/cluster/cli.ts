// `make cluster-up` / `make cluster-down`: a long-lived cluster for working by hand or for reusing in test
// runs (GPUGATE_KUBECONFIG, see global-setup.ts).
//
//   tsx test/cluster/cli.ts up [name]     start (name "dev" by default) and print its KUBECONFIG
//   tsx test/cluster/cli.ts down [name]   stop it and remove its run folder
//   tsx test/cluster/cli.ts env           print the binaries' paths
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { binaries, clustersDir, startCluster, stopCluster } from './cluster.ts';

const [command, name = 'dev'] = process.argv.slice(2);
const dir = join(clustersDir(), name);

switch (command) {
  case 'up': {
    if (existsSync(join(dir, 'cluster.json'))) console.log(`cluster ${name} exists: restarting it`);
    const info = await startCluster({
      name,
      detached: true,
      log: (line) => console.log(`[cluster] ${line}`),
    });
    console.log(`\nexport KUBECONFIG=${info.kubeconfig}`);
    console.log(`alias kubectl=${info.kubectl}   # ${info.kubernetesVersion}, matches the server`);
    console.log(`stop it with: make cluster-down${name === 'dev' ? '' : ` CLUSTER_NAME=${name}`}`);
    process.exit(0);
    break;
  }
  case 'down':
    await stopCluster(dir);
    console.log(`cluster ${name} stopped; ${dir} removed`);
    break;
  case 'env':
    for (const [component, path] of Object.entries(binaries())) console.log(`${component}=${path}`);
    break;
  default:
    console.error('usage: cli.ts up|down [name] | env');
    process.exit(2);
}
