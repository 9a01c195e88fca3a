import { defineConfig } from 'vitest/config';

// Test files of the tiers that need the Kubernetes control plane (test/cluster/harness.ts). They run in the
// "cluster" project, whose global setup starts one cluster per `vitest run`, and only when one of them is
// selected, so the other tiers never pay for it. A new cluster tier adds its glob here.
const CLUSTER_TIERS = ['test/cluster/**/*.test.ts', 'test/chart/**/*.test.ts'];
const EXCLUDE = ['node_modules/**', 'test/bench/**'];

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 300_000,
    // Suites start real servers (Postgres, simulators, an API server); run files one at a time per core.
    fileParallelism: true,
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: { name: 'default', include: ['test/**/*.test.ts'], exclude: [...EXCLUDE, ...CLUSTER_TIERS] },
      },
      {
        extends: true,
        test: {
          name: 'cluster',
          include: CLUSTER_TIERS,
          exclude: EXCLUDE,
          globalSetup: ['test/cluster/global-setup.ts'],
        },
      },
    ],
  },
});
