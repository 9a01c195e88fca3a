// The Node.js flags the data plane runs with (`node <flags> dataplane/main.ts`): the image's CMD, the
// chart's command, the operator's sidecar and the test and benchmark launchers use this list, and
// test/chart checks that the files that cannot import it (Dockerfile, chart) say the same.
//
// Every body chunk the data plane reads (an upload from a client, an answer from a backend) is a fresh
// buffer of up to 64 KiB outside the JavaScript heap, dead once written on. Without these flags a
// 100 MiB upload grew the process by 71–110 MiB, 16 concurrent ones by 125–172 MiB (issue #4's goal:
// 64), downloads alike; with them by 25–47 MiB, 25–34 MiB for 16 at once (docs/benchmarks.md, upload
// section; the decision and the alternatives measured: docs/decisions.md).
//
// --scavenger-max-new-space-capacity-mb=4: a young-generation GC (scavenge) frees dead young buffers,
// but V8 starts one for them only when they reach twice its default maximum semi-space, which this
// flag sets: by default (32, doubled without pointer compression) that is 128 MiB, so only the full GC
// that 64 MiB of new external memory triggers ever freed them. At 4 a scavenge runs after 16 MiB of
// young buffers. It also caps the semi-space at 8 MiB (the default grows with the heap limit: 64 MiB
// on a 24 GiB machine, less in a pod with a memory limit); `--max-semi-space-size` raises it again
// without moving the trigger.
// --no-concurrent-array-buffer-sweeping: the scavenge then frees the dead buffers itself instead of
// leaving them to a background thread, which on a busy machine runs late while new buffers keep
// arriving (growth up to 79 MiB at load average 9 without it, 36–42 MiB with it).
export const DATAPLANE_NODE_FLAGS: readonly string[] = [
  '--scavenger-max-new-space-capacity-mb=4',
  '--no-concurrent-array-buffer-sweeping',
];

/** The flags of DATAPLANE_NODE_FLAGS that a process's Node.js flags (process.execArgv) do not set, by name. */
export function missingNodeFlags(execArgv: readonly string[]): string[] {
  const name = (flag: string) => (flag.split('=', 1)[0] as string).replaceAll('_', '-');
  const given = new Set(execArgv.map(name));
  return DATAPLANE_NODE_FLAGS.filter((flag) => !given.has(name(flag)));
}
