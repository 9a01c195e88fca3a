// Benchmark upstream only (test/bench/streaming.ts): an OpenAI-style SSE server in its own process,
// as a model server is, so that a direct client crosses one process boundary each way and a client
// through gpugate two. Every request gets `chunks` data events `gap-ms` apart (the first `gap-ms`
// after the request has arrived), each stamped with its send time `t`, the first also with the
// request's arrival time `a`; then [DONE]. A request with `stream_options.include_usage` gets what
// OpenAI and vLLM send then: `"usage":null` in every token chunk and a usage-only chunk before
// [DONE] (gpugate asks for it and takes both out again for a client that did not). `x-bench-chunks`
// overrides the count (the warm-up asks for one). /health answers like a model server's.
//   node test/bench/sse-upstream.ts <chunks> <gap-ms>    (prints `listening <port>`)
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const [chunksArg, gapArg] = process.argv.slice(2);
if (!chunksArg || !gapArg) throw new Error('usage: sse-upstream.ts <chunks> <gap-ms>');
const CHUNKS = Number(chunksArg);
const GAP_MS = Number(gapArg);

/** Wall-clock milliseconds with sub-millisecond precision, comparable between processes on one host. */
const clock = () => performance.timeOrigin + performance.now();

const server = createServer({ keepAliveTimeout: 120_000 }, (req, res) => {
  const arrived = clock();
  if (req.url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"status":"ok"}');
    return;
  }
  const asked = req.headers['x-bench-chunks'];
  const chunks = typeof asked === 'string' ? Number(asked) : CHUNKS;
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (d: string) => (body += d));
  req.on('end', () => {
    const usage = body.includes('"include_usage":true');
    const tail = usage ? ',"usage":null}\n\n' : '}\n\n';
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    let i = 0;
    const timer = setInterval(() => {
      if (i === chunks) {
        clearInterval(timer);
        if (usage) {
          res.write(`data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":${chunks}}}\n\n`);
        }
        res.end('data: [DONE]\n\n');
        return;
      }
      const arrival = i === 0 ? `"a":${arrived},` : '';
      res.write(`data: {"t":${clock()},${arrival}"i":${i++},"choices":[{"delta":{"content":"tok"}}]${tail}`);
    }, GAP_MS);
    res.on('close', () => clearInterval(timer));
  });
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${(server.address() as AddressInfo).port}\n`);
});
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
