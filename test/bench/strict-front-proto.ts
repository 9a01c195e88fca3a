// THROWAWAY PROTOTYPE, not a product part and not wired into dataplane/: how much CPU per proxied
// request would a strict, minimal HTTP/1.1 front on node:net save against node:http's server? Both
// variants forward through the same undici dispatch handler to the same upstream; only the client
// side differs:
//   node:   http.createServer → IncomingMessage/ServerResponse, res.writeHead/write/end
//   strict: net.createServer, a parser for well-formed requests only (origin-form target, HTTP/1.1,
//           token header names, visible-ASCII values, CRLF line ends, one Host, at most one
//           Content-Length, no Transfer-Encoding, Expect, Upgrade or duplicate header), the response
//           head written as one string. Anything else, at a request boundary, goes to node:http:
//           the bytes are put back with socket.unshift and the socket is handed over with
//           server.emit('connection', socket).
// Request-smuggling safety of such a front would need its own review; nothing here is meant to ship.
//
//   node test/bench/strict-front-proto.ts [--rounds 12] [--seconds 2] [--connections 32]
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import {
  createServer,
  STATUS_CODES,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import { connect, createServer as createNetServer, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { Pool, request, type Dispatcher } from 'undici';
import { closedLoop, startFixedUpstream } from './load.ts';

const { values: args } = parseArgs({
  options: {
    serve: { type: 'string' },
    port: { type: 'string' },
    upstream: { type: 'string' },
    rounds: { type: 'string', default: '12' },
    seconds: { type: 'string', default: '2' },
    connections: { type: 'string', default: '32' },
  },
});

// ---------------------------------------------------------------- the two proxies (child process)

const HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'host',
]);
const MAX_HEAD = 16 * 1024;
const MAX_BODY = 1 << 20;

interface Sink {
  head(status: number, headers: Record<string, string | string[] | undefined>): void;
  data(chunk: Buffer): void;
  end(): void;
  fail(): void;
}

class Forward implements Dispatcher.DispatchHandler {
  readonly #sink: Sink;
  constructor(sink: Sink) {
    this.#sink = sink;
  }
  onRequestStart(): void {}
  onResponseStart(
    _c: Dispatcher.DispatchController,
    status: number,
    headers: Record<string, string | string[] | undefined>,
  ): void {
    this.#sink.head(status, headers);
  }
  onResponseData(_c: Dispatcher.DispatchController, chunk: Buffer): void {
    this.#sink.data(chunk);
  }
  onResponseEnd(): void {
    this.#sink.end();
  }
  onResponseError(): void {
    this.#sink.fail();
  }
}

function serve(mode: string, port: number, upstream: string): void {
  const pool = new Pool(upstream, { pipelining: 1 });
  const origin = new URL(upstream).origin;
  const forward = (
    method: string,
    path: string,
    headers: Record<string, string>,
    body: Buffer | null,
    sink: Sink,
  ) => {
    pool.dispatch(
      { origin, path, method: method as Dispatcher.HttpMethod, headers, body, headersTimeout: 30_000 },
      new Forward(sink),
    );
  };

  // node:http: the small body read whole (as gpugate reads a small JSON body), the same forwarding.
  const nodeHandler = (req: IncomingMessage, res: ServerResponse) => {
    const headers: Record<string, string> = {};
    const incoming: IncomingHttpHeaders = req.headers;
    for (const name in incoming) {
      const v = incoming[name];
      if (!HOP.has(name) && typeof v === 'string') headers[name] = v;
    }
    const sink: Sink = {
      head(status, h) {
        const out: Record<string, string | string[]> = {};
        for (const name in h) {
          const v = h[name];
          if (!HOP.has(name) && v !== undefined) out[name] = v;
        }
        res.writeHead(status, out);
      },
      data: (chunk) => void res.write(chunk),
      end: () => void res.end(),
      fail: () => {
        if (!res.headersSent) res.writeHead(502).end();
        else res.destroy();
      },
    };
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body =
        chunks.length === 0 ? null : chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
      forward(req.method as string, req.url as string, headers, body, sink);
    });
  };
  const nodeServer = createServer({ keepAliveTimeout: 65_000 }, nodeHandler);
  if (mode === 'node') {
    nodeServer.listen(port, '127.0.0.1', () => process.stdout.write('ready\n'));
    return;
  }
  let handedOff = 0;
  const front = createNetServer({ noDelay: true }, (socket) => new StrictConnection(socket));
  front.listen(port, '127.0.0.1', () => process.stdout.write('ready\n'));
  process.on('SIGUSR2', () => process.stdout.write(`handed off ${handedOff}\n`));

  const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
  const REQUEST_LINE = /^([A-Z]+) (\/[\x21-\x7e]*) HTTP\/1\.1$/;
  const HEADER_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\t]*?)[ \t]*$/;

  type Parsed =
    | { kind: 'incomplete' }
    | { kind: 'handoff' }
    | {
        kind: 'request';
        method: string;
        path: string;
        headers: Record<string, string>;
        body: Buffer | null;
        consumed: number;
        close: boolean;
      };

  function parse(buf: Buffer): Parsed {
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) {
      // A head that may end in bare LFs never shows CRLFCRLF: node:http decides those.
      for (let lf = buf.indexOf(10); lf >= 0; lf = buf.indexOf(10, lf + 1)) {
        if (lf === 0 || buf[lf - 1] !== 13) return { kind: 'handoff' };
      }
      return buf.length > MAX_HEAD ? { kind: 'handoff' } : { kind: 'incomplete' };
    }
    if (end > MAX_HEAD) return { kind: 'handoff' };
    const lines = buf.toString('latin1', 0, end).split('\r\n');
    const first = REQUEST_LINE.exec(lines[0] as string);
    if (!first || !METHODS.has(first[1] as string)) return { kind: 'handoff' };
    const headers: Record<string, string> = {};
    let length = 0;
    let hosts = 0;
    let close = false;
    const seen = new Set<string>();
    for (let i = 1; i < lines.length; i++) {
      const m = HEADER_LINE.exec(lines[i] as string);
      if (!m) return { kind: 'handoff' }; // obs-fold, bare LF or CR, control or non-ASCII bytes, bad name
      const name = (m[1] as string).toLowerCase();
      const value = m[2] as string;
      if (seen.has(name)) return { kind: 'handoff' };
      seen.add(name);
      if (name === 'transfer-encoding' || name === 'expect' || name === 'upgrade') return { kind: 'handoff' };
      if (name === 'content-length') {
        if (!/^\d{1,9}$/.test(value)) return { kind: 'handoff' };
        length = Number(value);
        if (length > MAX_BODY) return { kind: 'handoff' };
      } else if (name === 'host') {
        hosts++;
      } else if (name === 'connection') {
        const v = value.toLowerCase();
        if (v === 'close') close = true;
        else if (v !== 'keep-alive') return { kind: 'handoff' };
      }
      if (!HOP.has(name)) headers[name] = value;
    }
    if (hosts !== 1) return { kind: 'handoff' };
    const total = end + 4 + length;
    if (buf.length < total) return { kind: 'incomplete' };
    return {
      kind: 'request',
      method: first[1] as string,
      path: first[2] as string,
      headers,
      body: length > 0 ? buf.subarray(end + 4, total) : null,
      consumed: total,
      close,
    };
  }

  class StrictConnection implements Sink {
    readonly socket: Socket;
    buf: Buffer | null = null;
    busy = false;
    closeAfter = false;
    pendingHead: string | null = null;
    chunked = false;

    constructor(socket: Socket) {
      this.socket = socket;
      socket.on('data', this.onData);
      socket.on('error', () => socket.destroy());
    }

    readonly onData = (chunk: Buffer): void => {
      this.buf = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
      if (!this.busy) this.next();
    };

    next(): void {
      const buf = this.buf;
      if (buf === null) return;
      const r = parse(buf);
      if (r.kind === 'incomplete') return;
      if (r.kind === 'handoff') return this.handoff();
      this.buf = r.consumed < buf.length ? buf.subarray(r.consumed) : null;
      this.busy = true;
      this.closeAfter = r.close;
      // The body is a view into the connection buffer: copy it if more bytes follow it there.
      const body = r.body && this.buf ? Buffer.from(r.body) : r.body;
      forward(r.method, r.path, r.headers, body, this);
    }

    /** At a request boundary: node:http takes the connection over, starting with the unread bytes. */
    handoff(): void {
      handedOff++;
      this.socket.removeListener('data', this.onData);
      if (this.buf) this.socket.unshift(this.buf);
      this.buf = null;
      nodeServer.emit('connection', this.socket);
    }

    head(status: number, headers: Record<string, string | string[] | undefined>): void {
      let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}\r\n`;
      for (const name in headers) {
        if (HOP.has(name)) continue;
        const v = headers[name];
        if (v === undefined) continue;
        if (typeof v === 'string') head += `${name}: ${v}\r\n`;
        else for (const one of v) head += `${name}: ${one}\r\n`;
      }
      this.chunked = headers['content-length'] === undefined;
      if (this.chunked) head += 'transfer-encoding: chunked\r\n';
      if (this.closeAfter) head += 'connection: close\r\n';
      this.pendingHead = head + '\r\n';
    }

    data(chunk: Buffer): void {
      const s = this.socket;
      s.cork();
      if (this.pendingHead !== null) {
        s.write(this.pendingHead, 'latin1');
        this.pendingHead = null;
      }
      if (this.chunked) {
        s.write(`${chunk.length.toString(16)}\r\n`, 'latin1');
        s.write(chunk);
        s.write('\r\n', 'latin1');
      } else s.write(chunk);
      s.uncork();
    }

    end(): void {
      const s = this.socket;
      if (this.pendingHead !== null || this.chunked) {
        s.cork();
        if (this.pendingHead !== null) s.write(this.pendingHead, 'latin1');
        if (this.chunked) s.write('0\r\n\r\n', 'latin1');
        s.uncork();
        this.pendingHead = null;
      }
      this.busy = false;
      if (this.closeAfter) s.end();
      else this.next();
    }

    fail(): void {
      if (this.pendingHead === null && !this.busy) return;
      this.socket.destroy();
    }
  }
}

if (args.serve) {
  serve(args.serve, Number(args.port), args.upstream as string);
} else {
  await drive();
}

// ---------------------------------------------------------------- the driver

function cpuUs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10_000;
}

async function start(mode: string, upstream: string, port: number): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    [import.meta.filename, '--serve', mode, '--port', String(port), '--upstream', upstream],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`${mode} proxy exited with ${code}`)));
  });
  return child;
}

/** One raw request on a fresh connection; the whole answer as text (the proxy closes or 2 s pass). */
function raw(port: number, text: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let out = '';
    s.setEncoding('latin1');
    s.on('data', (d: string) => (out += d));
    s.on('error', () => resolve(out));
    s.on('close', () => resolve(out));
    s.setTimeout(2000, () => s.destroy());
    s.write(text);
  });
}

async function drive(): Promise<void> {
  const rounds = Number(args.rounds);
  const ms = Number(args.seconds) * 1000;
  const connections = Number(args.connections);
  const upstream = await startFixedUpstream();
  const sides = [
    { name: 'node:http', port: 18961, mode: 'node', cpu: [] as number[] },
    { name: 'strict front', port: 18962, mode: 'strict', cpu: [] as number[] },
  ].map((s) => ({ ...s, child: null as ChildProcess | null, pool: null as Pool | null }));
  for (const s of sides) {
    s.child = await start(s.mode, upstream.url, s.port);
    s.pool = new Pool(`http://127.0.0.1:${s.port}`, { connections, pipelining: 1 });
  }
  const strictPort = 18962;
  // What the strict front must still get right, through its own parser or node:http's.
  const checks: [string, boolean][] = [];
  const plain = await request(`http://127.0.0.1:${strictPort}/v1/x`, { method: 'POST', body: '{"a":1}' });
  checks.push([
    'POST with Content-Length: 200 with the upstream answer',
    plain.statusCode === 200 && (await plain.body.text()).includes('usage'),
  ]);
  const chunked = await request(`http://127.0.0.1:${strictPort}/v1/x`, {
    method: 'POST',
    body: Readable.from([Buffer.from('{"a":'), Buffer.from('1}')]),
  });
  checks.push([
    'chunked POST (handed to node:http): 200',
    chunked.statusCode === 200 && (await chunked.body.text()).includes('usage'),
  ]);
  // Requests outside the strict subset: the front must answer exactly as node:http alone does.
  const statusLine = (text: string) => text.slice(0, text.indexOf('\r\n'));
  const edgeCases: [string, string][] = [
    ['obs-fold', 'GET /v1/x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n'],
    [
      'Content-Length with Transfer-Encoding',
      'POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    ],
    [
      'two Content-Length',
      'POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab',
    ],
    ['two Host headers', 'GET /v1/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n'],
    ['bare LF', 'GET /v1/x HTTP/1.1\nHost: a\nConnection: close\n\n'],
    ['absolute-form target', 'GET http://a/v1/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n'],
    ['HTTP/1.0', 'GET /v1/x HTTP/1.0\r\nHost: a\r\n\r\n'],
    ['no Host', 'GET /v1/x HTTP/1.1\r\nConnection: close\r\n\r\n'],
    ['space before colon', 'GET /v1/x HTTP/1.1\r\nHost : a\r\nConnection: close\r\n\r\n'],
  ];
  for (const [what, text] of edgeCases) {
    const [viaStrict, viaNode] = [
      statusLine(await raw(strictPort, text)),
      statusLine(await raw(18961, text)),
    ];
    checks.push([
      `${what} (handed to node:http): "${viaStrict}", node:http alone "${viaNode}"`,
      viaStrict === viaNode && viaNode !== '',
    ]);
  }
  const pipelined = await raw(
    strictPort,
    'GET /v1/a HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n',
  );
  checks.push([
    'two pipelined requests: two 200s, then close',
    (pipelined.match(/HTTP\/1\.1 200/g) ?? []).length === 2,
  ]);
  const afterHandoff = await raw(
    strictPort,
    'POST /v1/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nGET /v1/b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n',
  );
  checks.push([
    'chunked then plain on one connection (node:http serves both): two 200s',
    (afterHandoff.match(/HTTP\/1\.1 200/g) ?? []).length === 2,
  ]);
  for (const [what, ok] of checks) console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (checks.some(([, ok]) => !ok)) process.exitCode = 1;

  const body = JSON.stringify({
    model: 'bench-model',
    messages: [{ role: 'user', content: 'Say hello in one word.' }],
  });
  const req = {
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json', authorization: 'Bearer x' },
    body,
  };
  const round = async (s: (typeof sides)[number], roundMs: number) => {
    const pid = s.child?.pid as number;
    const cpu0 = cpuUs(pid);
    const { ok, failed } = await closedLoop(s.pool as Pool, req, connections, roundMs);
    if (failed > 0) throw new Error(`${failed} requests failed through ${s.name}`);
    return (cpuUs(pid) - cpu0) / ok;
  };
  for (const s of sides) await round(s, 2000);
  const ratios: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const order = i % 2 === 0 ? sides : [...sides].reverse();
    const us = new Map<string, number>();
    for (const s of order) {
      const v = await round(s, ms);
      s.cpu.push(v);
      us.set(s.name, v);
    }
    const ratio = (us.get('strict front') as number) / (us.get('node:http') as number);
    ratios.push(ratio);
    console.log(
      `round ${i + 1}: node:http ${(us.get('node:http') as number).toFixed(1)} µs/req, strict front ${(us.get('strict front') as number).toFixed(1)} µs/req, ratio ${ratio.toFixed(3)}`,
    );
  }
  const median = (a: number[]) => {
    const x = [...a].sort((p, q) => p - q);
    return x.length % 2
      ? (x[(x.length - 1) / 2] as number)
      : ((x[x.length / 2 - 1] as number) + (x[x.length / 2] as number)) / 2;
  };
  for (const s of sides)
    console.log(
      `${s.name}: proxy CPU per request median ${median(s.cpu).toFixed(1)} µs, best ${Math.min(...s.cpu).toFixed(1)} µs`,
    );
  const sorted = [...ratios].sort((p, q) => p - q);
  console.log(
    `CPU per request, strict front ÷ node:http: median ${median(ratios).toFixed(3)} over ${rounds} pairs (quartiles ${(sorted[Math.floor(rounds / 4)] as number).toFixed(3)}–${(sorted[Math.floor((3 * rounds) / 4)] as number).toFixed(3)})`,
  );
  for (const s of sides) {
    await s.pool?.close();
    s.child?.kill('SIGTERM');
  }
  upstream.close();
}
