// Memory timeline of a gateway process under a benchmark (not a test), how the upload section of
// docs/benchmarks.md was diagnosed. Loaded with NODE_OPTIONS=--import into every process of a bench
// run, it records only in the gateway (test/bench/gpugate-runner.ts or dataplane/main.ts): every 2 ms
// process.memoryUsage() (heap, external, arrayBuffers) and /proc/self/status (VmRSS, RssAnon), and
// every GC (perf_hooks: minor, incremental, major); the JSON goes to GPUGATE_MEMORY_PROBE on exit.
//
//   GPUGATE_MEMORY_PROBE=/tmp/probe.json NODE_OPTIONS="--import ./test/bench/memory-probe.ts" \
//     node test/bench/upload.ts --rounds 1
//   node test/bench/memory-probe.ts /tmp/probe.json [--every-ms 10]
import { readFileSync, writeFileSync } from 'node:fs';
import { constants, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

interface Sample {
  ms: number;
  /** MiB */
  rss: number;
  anon: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}
interface Gc {
  ms: number;
  kind: string;
  durationMs: number;
}

const MiB = 2 ** 20;
const out = process.env.GPUGATE_MEMORY_PROBE;
const entry = process.argv[1] ?? '';
const isGateway = entry.endsWith('gpugate-runner.ts') || entry.endsWith('dataplane/main.ts');

if (out && isGateway) {
  const t0 = performance.now();
  const samples: Sample[] = [];
  const gcs: Gc[] = [];
  const kinds: Record<number, string> = {
    [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
    [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
    [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
    [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weak callbacks',
  };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as PerformanceEntry & { detail: { kind: number } }).detail.kind;
      gcs.push({ ms: e.startTime - t0, kind: kinds[kind] ?? String(kind), durationMs: e.duration });
    }
  }).observe({ entryTypes: ['gc'] });
  const kb = (status: string, name: string) =>
    Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) / 1024;
  setInterval(() => {
    const m = process.memoryUsage();
    const status = readFileSync('/proc/self/status', 'utf8');
    samples.push({
      ms: performance.now() - t0,
      rss: kb(status, 'VmRSS'),
      anon: kb(status, 'RssAnon'),
      heapUsed: m.heapUsed / MiB,
      external: m.external / MiB,
      arrayBuffers: m.arrayBuffers / MiB,
    });
  }, 2).unref();
  process.on('exit', () => writeFileSync(out, JSON.stringify({ samples, gcs })));
} else if (import.meta.url === `file://${entry}`) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { 'every-ms': { type: 'string', default: '10' } },
  });
  const file = positionals[0];
  if (!file) throw new Error('usage: memory-probe.ts <probe.json> [--every-ms 10]');
  const { samples, gcs } = JSON.parse(readFileSync(file, 'utf8')) as { samples: Sample[]; gcs: Gc[] };
  const range = (k: keyof Sample) =>
    `${Math.min(...samples.map((s) => s[k])).toFixed(1)}–${Math.max(...samples.map((s) => s[k])).toFixed(1)}`;
  const counts: Record<string, number> = {};
  for (const g of gcs) counts[g.kind] = (counts[g.kind] ?? 0) + 1;
  console.log(
    `${samples.length} samples, MiB: rss ${range('rss')}, RssAnon ${range('anon')}, arrayBuffers ${range('arrayBuffers')}, external ${range('external')}, heapUsed ${range('heapUsed')}`,
  );
  console.log(`GCs: ${JSON.stringify(counts)}`);
  // The timeline, interleaved with the GCs, from the first sample with body buffers in flight.
  const every = Number(values['every-ms']);
  const first = samples.find((s) => s.arrayBuffers > 1)?.ms ?? 0;
  const lines: [number, string][] = [];
  let last = -Infinity;
  for (const s of samples) {
    if (s.ms < first || s.ms - last < every) continue;
    last = s.ms;
    lines.push([
      s.ms,
      `${s.ms.toFixed(0)} ms  rss ${s.rss.toFixed(1)}  anon ${s.anon.toFixed(1)}  arrayBuffers ${s.arrayBuffers.toFixed(1)}  external ${s.external.toFixed(1)}  heap ${s.heapUsed.toFixed(1)}`,
    ]);
  }
  for (const g of gcs) {
    if (g.ms >= first)
      lines.push([g.ms, `${g.ms.toFixed(0)} ms  GC ${g.kind} ${g.durationMs.toFixed(1)} ms`]);
  }
  for (const [, line] of lines.sort((a, b) => a[0] - b[0])) console.log(line);
}
