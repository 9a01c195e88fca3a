// Benchmark backend only: a node:http server answering every request with one fixed small chat
// completion, as a model server written in a GC'd runtime would (its CPU per request is a Node
// process's, about 15-20 µs here, where nginx's `return 200` costs 5). The proxy benchmark's
// `--backend node` puts it behind every target instead of nginx.
//   node test/bench/backend-node.ts <port> <completion-json>
import { createServer } from 'node:http';

const [port, completion] = process.argv.slice(2);
if (!port || !completion) throw new Error('usage: backend-node.ts <port> <completion-json>');
const body = Buffer.from(completion);
const headers = { 'content-type': 'application/json', 'content-length': String(body.length) };

createServer({ keepAliveTimeout: 120_000 }, (req, res) => {
  // Read the request body to its end before answering, as a real server parses it.
  req.on('end', () => {
    res.writeHead(200, headers);
    res.end(body);
  });
  req.resume();
}).listen(Number(port), '127.0.0.1');
