import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['node_modules/**', 'test/bench/**'],
    testTimeout: 60_000,
    hookTimeout: 300_000,
    // Suites start real servers (Postgres, simulators, an API server); run files one at a time per core.
    fileParallelism: true,
    maxWorkers: 2,
  },
});
