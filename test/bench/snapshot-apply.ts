// What a data plane spends applying a large pushed snapshot (parse, schema check, revision check,
// compile of the runtime), for the body as the operator sends it (canonical JSON: members sorted) and
// as plain JSON.stringify order, alternating, in one process. Run: node test/bench/snapshot-apply.ts
//   [--tenants 1000] [--keys 10000] [--backends 100] [--rounds 3]
import { parseArgs } from 'node:util';
import { canonicalJson, contentRevision } from '../../dataplane/config/revision.ts';
import { createDataPlane } from '../../dataplane/server.ts';
import { apiKey, backend, quietLogger, snapshot, tenant } from '../dataplane/harness.ts';

const { values } = parseArgs({
  options: {
    tenants: { type: 'string', default: '1000' },
    keys: { type: 'string', default: '10000' },
    backends: { type: 'string', default: '100' },
    rounds: { type: 'string', default: '3' },
  },
});
const T = Number(values.tenants);
const K = Number(values.keys);
const B = Number(values.backends);
const ROUNDS = Number(values.rounds);

const base = snapshot({
  backends: Array.from({ length: B }, (_, i) =>
    backend(`ns/b${i}`, [`http://127.0.0.1:${9000 + i}`], { models: [`m${i}`] }),
  ),
  tenants: Array.from({ length: T }, (_, i) => tenant(`ns/t${i}`)),
  keys: Array.from({ length: K }, (_, i) => apiKey(`ns/t${i % T}`, { id: `ns/k${i}` }).key),
});
const dp = await createDataPlane({
  logger: quietLogger,
  listen: { host: '127.0.0.1', port: 0 },
  admin: { host: '127.0.0.1', port: 0, token: 'bench' },
});

let step = 0;
/** A body with changed content (one key toggled) and a later generatedAt, so each apply does the whole work. */
function nextBody(order: 'canonical' | 'stringify'): string {
  step++;
  const s = structuredClone(base);
  s.keys[step % K]!.disabled = true;
  s.generatedAt = new Date(Date.parse(base.generatedAt) + step * 1000).toISOString();
  s.revision = contentRevision(s);
  return order === 'canonical' ? canonicalJson(s) : JSON.stringify(s);
}

const times: Record<'canonical' | 'stringify', number[]> = { canonical: [], stringify: [] };
for (let r = 0; r < ROUNDS; r++) {
  for (const order of ['stringify', 'canonical'] as const) {
    for (let i = 0; i < 5; i++) {
      const body = nextBody(order);
      const started = performance.now();
      const result = dp.applySnapshot(JSON.parse(body));
      const ms = performance.now() - started;
      if (!result.accepted) throw new Error(`refused: ${JSON.stringify(result).slice(0, 300)}`);
      times[order].push(ms);
    }
  }
}
await dp.close();
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const bytes = canonicalJson(base).length;
console.log(`${B} backends, ${T} tenants, ${K} keys: ${(bytes / 1024).toFixed(0)} KiB`);
for (const order of ['stringify', 'canonical'] as const) {
  console.log(
    `  ${order.padEnd(9)} order: apply (JSON.parse included) median ${median(times[order]).toFixed(1)} ms over ${times[order].length}`,
  );
}
console.log(`  canonical / stringify: ${(median(times.canonical) / median(times.stringify)).toFixed(2)}`);
