// The data plane's check of its own Node.js flags (dataplane/node-flags.ts): main.ts warns when a
// custom command left one out, matching V8's spelling rules (dashes or underscores, any value).
import { describe, expect, it } from 'vitest';
import { DATAPLANE_NODE_FLAGS, missingNodeFlags } from '../../dataplane/node-flags.ts';

describe('missingNodeFlags', () => {
  it('finds nothing missing when the process runs with the data plane flags', () => {
    expect(missingNodeFlags(DATAPLANE_NODE_FLAGS)).toEqual([]);
    expect(missingNodeFlags(['--inspect', ...DATAPLANE_NODE_FLAGS, '--trace-gc'])).toEqual([]);
  });

  it('names every data plane flag a process started without', () => {
    expect(DATAPLANE_NODE_FLAGS.length).toBeGreaterThan(0);
    expect(missingNodeFlags([])).toEqual([...DATAPLANE_NODE_FLAGS]);
    expect(missingNodeFlags(['--max-old-space-size=512'])).toEqual([...DATAPLANE_NODE_FLAGS]);
  });

  it('accepts a flag set to another value or spelled with underscores, as V8 does', () => {
    const other = DATAPLANE_NODE_FLAGS.map((f) => `${f.split('=')[0]}=2`);
    expect(missingNodeFlags(other)).toEqual([]);
    const underscored = DATAPLANE_NODE_FLAGS.map((f) => '--' + f.slice(2).replaceAll('-', '_'));
    expect(missingNodeFlags(underscored)).toEqual([]);
  });
});
