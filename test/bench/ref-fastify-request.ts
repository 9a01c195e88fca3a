// Reference proxy for the benchmark only: a bare Fastify catch-all route forwarding with undici
// `request`, no features. Usage: node ref-fastify-request.ts <port> <upstream-url>
import Fastify from 'fastify';
import { Pool } from 'undici';

const [port, upstream] = process.argv.slice(2);
if (!port || !upstream) throw new Error('usage: ref-fastify-request.ts <port> <upstream-url>');
const pool = new Pool(upstream, { pipelining: 1 });
const app = Fastify();
app.removeAllContentTypeParsers();
app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
app.all('/*', async (request, reply) => {
  const headers = { ...request.headers };
  delete headers.host;
  delete headers.connection;
  const res = await pool.request({
    path: request.url,
    method: request.method as 'GET',
    headers,
    body: request.method === 'GET' || request.method === 'HEAD' ? null : request.raw,
  });
  delete res.headers.connection;
  delete res.headers['keep-alive'];
  delete res.headers['transfer-encoding'];
  return reply.code(res.statusCode).headers(res.headers).send(res.body);
});
await app.listen({ port: Number(port), host: '127.0.0.1' });
