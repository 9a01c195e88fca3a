// Reference proxy for the benchmark only: raw node:http forwarding with undici `stream`, no
// features. Usage: node ref-node-stream.ts <port> <upstream-url>
import { createServer } from 'node:http';
import { Pool } from 'undici';

const [port, upstream] = process.argv.slice(2);
if (!port || !upstream) throw new Error('usage: ref-node-stream.ts <port> <upstream-url>');
const pool = new Pool(upstream, { pipelining: 1 });

createServer((req, res) => {
  const headers = { ...req.headers };
  delete headers.host;
  delete headers.connection;
  pool
    .stream(
      {
        path: req.url ?? '/',
        method: req.method ?? 'GET',
        headers,
        body: req.method === 'GET' || req.method === 'HEAD' ? null : req,
      },
      ({ statusCode, headers: h }) => {
        delete h.connection;
        delete h['keep-alive'];
        delete h['transfer-encoding'];
        res.writeHead(statusCode, h as Record<string, string>);
        return res;
      },
    )
    .catch(() => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
}).listen(Number(port), '127.0.0.1');
