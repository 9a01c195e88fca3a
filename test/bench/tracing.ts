// Tracing on vs off: data-plane throughput and CPU per request, in one run. Not a test: numbers go to
// docs/benchmarks.md.
//
//   node test/bench/tracing.ts [--seconds 5] [--rounds 3] [--connections 32] [--warmup-seconds 3]
//
// Five gpugate processes (test/bench/gateway-process.ts, gpugate-runner.ts: every request-path feature
// on, counting usage sink) in front of the same fixed-answer upstream, loaded one after the other by the
// same closed-loop generator (test/bench/load.ts), the order rotating every round to spread drift:
//   off A, off B  tracing off as shipped (no tracer constructed; the request path holds a null). Two
//                 identical gateways: their difference is the noise floor of this machine and run, which
//                 is what "off is free" can be measured against;
//   unsampled     the SDK constructed with sampleRatio 0: the tracing code paths run and every span is a
//                 non-recording one (what an installation pays for an endpoint with sampling turned down);
//   noop          every request sampled: six spans recorded, batched, handed to an exporter that discards
//                 them (the SDK's own cost, no network);
//   otlp          every request sampled and exported over OTLP/HTTP JSON to a loopback receiver in this
//                 process (test/fixtures/otlp-receiver.ts; its parsing competes for the same cores).
// Prints req/s and gateway CPU µs per request per round, then each variant against off A: throughput
// ratio (sums) and CPU ratio (medians, off A ÷ variant: above 1 means cheaper than off A), each variant's
// least CPU per request over its rounds (other work on a shared machine only adds to it), and the spans
// the receiver got per otlp request.
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { startOtlpReceiver } from '../fixtures/otlp-receiver.ts';
import { startGateway, type GatewayProcess } from './gateway-process.ts';
import { closedLoop, startFixedUpstream } from './load.ts';

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '3' },
    connections: { type: 'string', default: '32' },
    'warmup-seconds': { type: 'string', default: '3' },
  },
});
const seconds = Number(args.seconds);
const rounds = Number(args.rounds);
const connections = Number(args.connections);
const body = JSON.stringify({
  model: 'bench-model',
  messages: [{ role: 'user', content: 'hello' }],
  max_tokens: 16,
});

interface Round {
  rate: number;
  cpuUsPerReq: number;
  ok: number;
}

async function main(): Promise<void> {
  const upstream = await startFixedUpstream();
  const receiver = await startOtlpReceiver();
  const variants: [string, string][] = [
    ['off A', 'off'],
    ['off B', 'off'],
    ['unsampled', 'unsampled'],
    ['noop', 'noop'],
    ['otlp', receiver.url],
  ];
  const gateways: GatewayProcess[] = [];
  try {
    console.log(
      `tracing on vs off: ${cpus().length} cores, ${cpus()[0]?.model ?? ''}; load average ` +
        `${loadavg()
          .map((l) => l.toFixed(2))
          .join(' ')}; ${rounds} rounds of ${seconds} s, ${connections} connections`,
    );
    for (const [, mode] of variants) gateways.push(await startGateway(upstream.url, { tracing: mode }));

    let otlpOk = 0;
    async function load(i: number, ms: number): Promise<Round> {
      const gw = gateways[i]!;
      const pool = new Pool(gw.url, { connections, pipelining: 1 });
      const headers = { 'content-type': 'application/json', authorization: `Bearer ${gw.key}` };
      const cpu0 = gw.cpuUs();
      const { ok, failed } = await closedLoop(
        pool,
        { path: '/v1/chat/completions', headers, body },
        connections,
        ms,
      );
      const cpu = gw.cpuUs() - cpu0;
      await pool.close();
      if (failed > 0) throw new Error(`${variants[i]![0]}: ${failed} requests failed`);
      if (variants[i]![1] === receiver.url) otlpOk += ok;
      return { rate: ok / (ms / 1000), cpuUsPerReq: cpu / ok, ok };
    }

    // Warm-up (JIT, connections, the exporter's first batches), not counted.
    for (let i = 0; i < variants.length; i++) await load(i, Number(args['warmup-seconds']) * 1000);
    const spans0 = receiver.spans.length;
    otlpOk = 0;
    const runs: Round[][] = variants.map(() => []);
    for (let r = 0; r < rounds; r++)
      for (let k = 0; k < variants.length; k++) {
        const i = (k + r) % variants.length;
        runs[i]!.push(await load(i, seconds * 1000));
      }
    // The last batches: the exporter sends every second.
    await new Promise((res) => setTimeout(res, 2500));

    const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
    const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;
    const base = runs[0]!;
    for (let i = 0; i < variants.length; i++) {
      const v = runs[i]!;
      const tput = sum(v.map((x) => x.rate)) / sum(base.map((x) => x.rate));
      const cpu = median(base.map((x) => x.cpuUsPerReq)) / median(v.map((x) => x.cpuUsPerReq));
      // The least-disturbed round: on a shared machine other work only ever adds CPU per request.
      const least = Math.min(...v.map((x) => x.cpuUsPerReq));
      console.log(
        `${variants[i]![0].padEnd(10)} ${v.map((x) => x.rate.toFixed(0)).join(', ')} req/s; ` +
          `CPU ${v.map((x) => x.cpuUsPerReq.toFixed(0)).join(', ')} µs/req; ` +
          `vs off A: throughput ${tput.toFixed(3)}, CPU ${cpu.toFixed(3)}; least CPU ${least.toFixed(0)} µs/req`,
      );
    }
    const spans = receiver.spans.length - spans0;
    console.log(
      `otlp receiver: ${spans} spans for ${otlpOk} requests (${(spans / otlpOk).toFixed(2)} per request; the warm-up's late batches may add a few)`,
    );
    console.log(
      `load average at the end ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
    );
  } finally {
    for (const gw of gateways) await gw.stop();
    upstream.close();
    await receiver.close();
  }
}

await main();
