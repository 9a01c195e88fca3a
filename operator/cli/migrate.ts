// gpugate migrate: apply the usage database migrations alone (a Job before a rollout, or by hand).
// Safe while data planes run: they take the same advisory lock.
import { migrate } from '../../dataplane/metering/migrate.ts';
import type { Command } from './command.ts';

const run: Command = {
  path: ['migrate'],
  summary: 'Apply pending usage-database migrations (DATABASE_URL)',
  args: [],
  async run(ctx) {
    const result = await migrate(ctx.db());
    return {
      text:
        result.applied.length > 0
          ? `applied ${result.applied.join(', ')} (${result.alreadyApplied} already applied)`
          : `nothing to apply (${result.alreadyApplied} migrations already applied)`,
      json: result,
    };
  },
};

export const migrateCommands: Command[] = [run];
