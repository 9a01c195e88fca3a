// TLS on the data plane's public port: certificates made with openssl (test/fixtures/certs.ts), real
// HTTPS clients that verify against the test CA, a certificate rotated on disk the way a Secret volume
// is updated (new files renamed into place), a broken pair refused while the previous one keeps
// serving, and bad files refused at start with a message naming the file.
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as netConnect } from 'node:net';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDataPlane, type DataPlane } from '../../dataplane/server.ts';
import { makeCa, makeServerCert, presentedCertificate, type TestCa } from '../fixtures/certs.ts';
import { startDataPlaneProcess, startProcess } from '../fixtures/processes.ts';
import {
  apiKey,
  backend,
  chat,
  metric,
  quietLogger,
  snapshotFor,
  startUpstream,
  type Upstream,
} from './harness.ts';

interface Pair {
  certFile: string;
  keyFile: string;
  cert: string;
  key: string;
}

describe('data plane TLS', () => {
  let dir: string;
  let mount: string;
  let ca1: TestCa;
  let ca2: TestCa;
  let first: Pair;
  let second: Pair;
  let up: Upstream;
  let plane: DataPlane;
  let port: number;
  const outcomes: string[] = [];
  const key = apiKey('team/a');

  /** Puts a cert and key in the mounted folder the way the kubelet does: write aside, then rename. */
  const install = (cert: string, keyPem: string) => {
    writeFileSync(join(mount, '.tls.crt.new'), cert);
    writeFileSync(join(mount, '.tls.key.new'), keyPem);
    renameSync(join(mount, '.tls.key.new'), join(mount, 'tls.key'));
    renameSync(join(mount, '.tls.crt.new'), join(mount, 'tls.crt'));
  };
  const fingerprint = (pem: string) => new X509Certificate(pem).fingerprint256;
  const callWith = async (ca: string) => {
    const agent = new Agent({ connect: { ca } });
    try {
      const res = await request(`${plane.url}/v1/chat/completions`, {
        method: 'POST',
        body: chat('m'),
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key.secret}` },
        dispatcher: agent,
      });
      await res.body.dump();
      return res.statusCode;
    } finally {
      await agent.close();
    }
  };
  /** Polls (bounded in count) until the server presents `fp`. */
  const untilPresented = async (fp: string, ca: string[]) => {
    let seen = '';
    for (let i = 0; i < 300 && seen !== fp; i++) {
      seen = await presentedCertificate(port, ca).catch(() => '');
      if (seen !== fp) await new Promise((r) => setTimeout(r, 100));
    }
    return seen;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gpugate-tls-'));
    mount = join(dir, 'mount');
    mkdirSync(mount);
    ca1 = await makeCa(dir, 'ca-one');
    ca2 = await makeCa(dir, 'ca-two');
    first = await makeServerCert(ca1, 'server-one');
    second = await makeServerCert(ca2, 'server-two');
    copyFileSync(first.certFile, join(mount, 'tls.crt'));
    copyFileSync(first.keyFile, join(mount, 'tls.key'));
    up = await startUpstream('up');
    plane = await createDataPlane({
      logger: quietLogger,
      listen: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0, token: 'push-token-for-tests' },
      tls: {
        certFile: join(mount, 'tls.crt'),
        keyFile: join(mount, 'tls.key'),
        reloadIntervalMs: 100,
        onReload: (o) => outcomes.push(o),
      },
    });
    plane.applySnapshot(snapshotFor(backend('team/up', [up.url]), key.key));
    port = Number(new URL(plane.url).port);
  });
  afterAll(async () => {
    await plane?.close({ drainMs: 0 });
    await up?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves HTTPS on the public port to a client that verifies against the CA', async () => {
    expect(plane.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(await callWith(ca1.pem)).toBe(200);
    expect(up.requests.length).toBeGreaterThan(0);
    expect(await presentedCertificate(port, [ca1.pem])).toBe(fingerprint(first.cert));
  });

  it('a client that does not trust the CA, and a plain-HTTP client, get no answer from a backend', async () => {
    const before = up.requests.length;
    await expect(callWith(ca2.pem)).rejects.toMatchObject({
      code: expect.stringMatching(/UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED|UNABLE_TO_GET_ISSUER/),
    });
    const plain = await request(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: 'POST',
      body: chat('m'),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key.secret}` },
    }).then(
      async (res) => {
        await res.body.dump();
        return res.statusCode;
      },
      () => 0,
    );
    expect(plain).not.toBe(200);
    expect(up.requests.length).toBe(before);
  });

  it('the admin port stays plain HTTP', async () => {
    expect(plane.adminUrl).toMatch(/^http:\/\//);
    const res = await request(`${plane.adminUrl}/healthz`);
    expect(res.statusCode).toBe(200);
    await res.body.dump();
  });

  it('a certificate rotated on disk is served to new connections without a restart', async () => {
    install(second.cert, second.key);
    expect(await untilPresented(fingerprint(second.cert), [ca1.pem, ca2.pem])).toBe(fingerprint(second.cert));
    expect(outcomes).toContain('reloaded');
    expect(await callWith(ca2.pem)).toBe(200);
  });

  it('a pair that does not match is refused and the previous certificate keeps serving', async () => {
    const refusedBefore = outcomes.filter((o) => o === 'refused').length;
    install(first.cert, second.key);
    for (let i = 0; i < 300 && outcomes.filter((o) => o === 'refused').length === refusedBefore; i++)
      await new Promise((r) => setTimeout(r, 50));
    expect(outcomes.filter((o) => o === 'refused').length).toBe(refusedBefore + 1);
    expect(await presentedCertificate(port, [ca1.pem, ca2.pem])).toBe(fingerprint(second.cert));
    expect(await callWith(ca2.pem)).toBe(200);
    // Repaired: the next good pair is taken.
    install(first.cert, first.key);
    expect(await untilPresented(fingerprint(first.cert), [ca1.pem, ca2.pem])).toBe(fingerprint(first.cert));
  });

  it("a client that never finishes the TLS handshake is cut after headersTimeoutMs, not after Node's 120 s", async () => {
    const slow = await createDataPlane({
      logger: quietLogger,
      listen: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0, token: null },
      tls: { certFile: first.certFile, keyFile: first.keyFile, reloadIntervalMs: 0 },
      headersTimeoutMs: 500,
    });
    try {
      const slowPort = Number(new URL(slow.url).port);
      // 20 connections: 10 send nothing, 10 send the first bytes of a ClientHello and stall.
      const sockets = Array.from({ length: 20 }, (_, i) => {
        const s = netConnect(slowPort, '127.0.0.1');
        if (i % 2 === 1) s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
        s.on('error', () => undefined);
        return new Promise<'closed' | 'open'>((resolve) => {
          // Bounded: 15 s is 30 times the configured timeout and an eighth of Node's default.
          const timer = setTimeout(() => {
            s.destroy();
            resolve('open');
          }, 15_000);
          s.on('close', () => {
            clearTimeout(timer);
            resolve('closed');
          });
        });
      });
      expect(await Promise.all(sockets)).toEqual(Array(20).fill('closed'));
    } finally {
      await slow.close({ drainMs: 0 });
    }
  });

  it("exports the served certificate's expiry and the reload outcomes on the admin port", async () => {
    // After the rotations above the first certificate is served again.
    expect(await metric(plane, 'gpugate_tls_certificate_expiry_timestamp_seconds')).toBe(
      Math.floor(Date.parse(new X509Certificate(first.cert).validTo) / 1000),
    );
    expect(await metric(plane, 'gpugate_tls_reloads_total{outcome="reloaded"}')).toBeGreaterThanOrEqual(2);
    expect(await metric(plane, 'gpugate_tls_reloads_total{outcome="refused"}')).toBeGreaterThanOrEqual(1);
  });

  it('refuses to start with a missing, non-PEM or mismatched pair, naming the file', async () => {
    const start = (certFile: string, keyFile: string) =>
      createDataPlane({
        logger: quietLogger,
        listen: { host: '127.0.0.1', port: 0 },
        admin: { host: '127.0.0.1', port: 0, token: null },
        tls: { certFile, keyFile, reloadIntervalMs: 0 },
      });
    const missing = join(dir, 'missing.crt');
    await expect(start(missing, first.keyFile)).rejects.toThrow(
      `cannot read the TLS certificate file ${missing}: ENOENT`,
    );
    const notPem = join(dir, 'not-pem.crt');
    writeFileSync(notPem, 'hello');
    await expect(start(notPem, first.keyFile)).rejects.toThrow(`${notPem} holds no PEM certificate`);
    await expect(start(first.certFile, first.certFile)).rejects.toThrow(
      `the TLS key file ${first.certFile} holds no PEM private key`,
    );
    const err = await start(first.certFile, second.keyFile).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toContain('do not form a usable pair');
    expect((err as Error).message).not.toContain(second.key.split('\n')[1]!);
  });

  it('the process takes --tls-cert-file/--tls-key-file (the chart sets them from a Secret) and refuses half a pair', async () => {
    const p = await startDataPlaneProcess({
      token: 'push-token-for-tests',
      args: ['--tls-cert-file', first.certFile, '--tls-key-file', first.keyFile],
    });
    try {
      expect(p.url).toMatch(/^https:\/\//);
      expect(p.adminUrl).toMatch(/^http:\/\//);
      expect(await presentedCertificate(Number(new URL(p.url).port), [ca1.pem])).toBe(
        fingerprint(first.cert),
      );
    } finally {
      await p.kill();
    }
    const half = startProcess('dataplane/main.ts', [
      '--port',
      '0',
      '--admin-port',
      '0',
      '--tls-cert-file',
      first.certFile,
    ]);
    expect(await half.exited).toBe(2);
    expect(half.log()).toContain('TLS needs both --tls-cert-file');
    const mismatched = startProcess('dataplane/main.ts', [
      '--port',
      '0',
      '--admin-port',
      '0',
      '--tls-cert-file',
      first.certFile,
      '--tls-key-file',
      second.keyFile,
    ]);
    expect(await mismatched.exited).toBe(2);
    expect(mismatched.log()).toContain('do not form a usable pair');
  });
});
