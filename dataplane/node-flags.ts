// The Node.js flags the data plane runs with (`node <flags> dataplane/main.ts`): the image's CMD, the
// chart's command, the operator's sidecar and the test and benchmark launchers use this list, and
// test/chart checks that the files that cannot import it (Dockerfile, chart) say the same.
//
// --scavenger-max-new-space-capacity-mb=4: every body chunk the data plane reads (an upload from a
// client, an answer from a backend) is a fresh buffer of up to 64 KiB outside the JavaScript heap, dead
// once written on. A young-generation GC (scavenge) frees the dead ones, but V8 starts one for them
// only when young buffers reach twice its default maximum semi-space, which this flag sets: by default
// (32, doubled without pointer compression: 64 MiB semi-spaces) that is 128 MiB, so only the full GC
// that 64 MiB of new external memory triggers ever freed them, and a 100 MiB upload grew the process
// by 71–98 MiB, 16 concurrent ones by 125 MiB. At 4, a scavenge runs after 16 MiB of young buffers:
// 27–47 MiB of growth, 33 MiB for 16 concurrent uploads. The flag also caps the semi-space at 8 MiB;
// the small-request path shows no cost from that (docs/benchmarks.md, upload section; the decision
// and the alternatives measured: docs/decisions.md).
export const DATAPLANE_NODE_FLAGS: readonly string[] = ['--scavenger-max-new-space-capacity-mb=4'];

/** The flags of DATAPLANE_NODE_FLAGS that a process's Node.js flags (process.execArgv) do not set, by name. */
export function missingNodeFlags(execArgv: readonly string[]): string[] {
  const name = (flag: string) => (flag.split('=', 1)[0] as string).replaceAll('_', '-');
  const given = new Set(execArgv.map(name));
  return DATAPLANE_NODE_FLAGS.filter((flag) => !given.has(name(flag)));
}
