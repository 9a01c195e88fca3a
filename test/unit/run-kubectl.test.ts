// runKubectl (test/cluster/cluster.ts) when kubectl exits before reading its input. The stand-ins for
// kubectl are /bin/false and /bin/true (they exit at once, reading nothing): a 1 MiB input cannot fit in
// the pipe, so the write fails with EPIPE, as it did from test/chart/chart.test.ts when kubectl failed
// early. That must be the command's error, not an uncaught exception (which vitest reports as a failure).
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { runKubectl } from '../cluster/cluster.ts';

const input = 'x'.repeat(1024 * 1024);
const bin = (name: string) => [`/bin/${name}`, `/usr/bin/${name}`].find((p) => existsSync(p))!;

describe('runKubectl', () => {
  it('a kubectl that fails before reading its input rejects with its exit code and the write error', async () => {
    await expect(runKubectl(bin('false'), '/nonexistent', ['apply', '-f', '-'], input)).rejects.toThrow(
      /^kubectl apply -f - failed \(exit 1\) \(writing its input: .*EPIPE/,
    );
  });

  it('a kubectl that exits 0 without reading its input is an error too, not a silent success', async () => {
    await expect(runKubectl(bin('true'), '/nonexistent', ['apply', '-f', '-'], input)).rejects.toThrow(
      /^kubectl apply -f - exited 0 without reading its input \(.*EPIPE/,
    );
  });
});
