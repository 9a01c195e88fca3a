// The gpugate CLI against the real API server: Tenants and ApiKeys written with server-side apply
// under the field manager gpugate-cli (fields of other managers kept), the key Secret holding the
// key, the key printed once, lookups by key and prefix, and errors for unknown objects.
import { beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../../operator/cli/command.ts';
import { kubeconfigPath, kubectl, newNamespace } from './harness.ts';
import { installCrds } from './operator-helpers.ts';
import { runCliCaptured } from '../fixtures/cli.ts';

const gpugate = (...argv: string[]) => runCliCaptured([...argv, '--kubeconfig', kubeconfigPath()]);

describe('gpugate CLI on a cluster', () => {
  let ns: string;

  beforeAll(async () => {
    await installCrds();
    ns = await newNamespace('cli');
  });

  it('creates a Tenant and sets its quota as gpugate-cli, keeping fields kubectl applied', async () => {
    const created = await gpugate('tenant', 'create', 'acme', '--credits', '100', '-n', ns);
    expect(created).toMatchObject({ code: 0, stderr: '' });
    await kubectl([
      'patch',
      'tenant',
      'acme',
      '-n',
      ns,
      '--type=merge',
      '-p',
      '{"spec":{"displayName":"Acme"}}',
    ]);
    const set = await gpugate('quota', 'set', 'acme', '250', '--period', 'Daily', '-n', ns);
    expect(set.stdout).toBe(`quota of tenant ${ns}/acme: 100 credits Monthly -> 250 credits Daily\n`);
    const tenant = JSON.parse(
      await kubectl(['get', 'tenant', 'acme', '-n', ns, '-o', 'json', '--show-managed-fields']),
    ) as {
      spec: { quota: unknown; displayName: string };
      metadata: { managedFields: { manager: string; operation: string }[] };
    };
    expect(tenant.spec.quota).toEqual({ credits: 250, period: 'Daily' });
    expect(tenant.spec.displayName).toBe('Acme');
    expect(tenant.metadata.managedFields).toContainEqual(
      expect.objectContaining({ manager: 'gpugate-cli', operation: 'Apply' }),
    );
    const info = await gpugate('tenant', 'info', 'acme', '-n', ns, '-o', 'json');
    expect(JSON.parse(info.stdout)).toMatchObject({
      tenant: `${ns}/acme`,
      spec: { quota: { credits: 250 } },
    });
  });

  it('creates an ApiKey and its Secret, prints the key once and finds it again by value and prefix', async () => {
    const r = await gpugate('key', 'create', 'acme', '--name', 'acme-ci', '-n', ns);
    expect(r.code).toBe(0);
    const key = /gpg_[0-9A-Za-z]{36}/.exec(r.stdout)?.[0] as string;
    expect(r.stdout.split(key)).toHaveLength(2);
    const apiKey = await kubectl(['get', 'apikey', 'acme-ci', '-n', ns, '-o', 'json']);
    expect(apiKey).not.toContain(key);
    expect(JSON.parse(apiKey)).toMatchObject({ spec: { tenant: 'acme' } });
    const secret = JSON.parse(
      await kubectl(['get', 'secret', 'acme-ci-gpugate-key', '-n', ns, '-o', 'json']),
    ) as {
      data: { key: string };
    };
    expect(Buffer.from(secret.data.key, 'base64').toString()).toBe(key);

    const byKey = await gpugate('key', 'info', key, '-n', ns, '-o', 'json');
    expect(byKey.stdout).not.toContain(key);
    expect(JSON.parse(byKey.stdout)).toMatchObject({ apiKey: `${ns}/acme-ci`, tenant: `${ns}/acme` });
    const byPrefix = await gpugate('key', 'info', key.slice(0, 9), '-A');
    expect(
      JSON.parse((await gpugate('key', 'info', key.slice(0, 9), '-A', '-o', 'json')).stdout),
    ).toMatchObject({
      apiKey: `${ns}/acme-ci`,
    });
    expect(byPrefix.code).toBe(0);

    const again = await gpugate('key', 'create', 'acme', '--name', 'acme-ci', '-n', ns);
    expect(again.code).toBe(EXIT.conflict);
    expect(again.stderr).toContain(`ApiKey ${ns}/acme-ci already exists`);
  });

  it('names unknown tenants and the namespace it looked in', async () => {
    const r = await gpugate('key', 'create', 'nobody', '-n', ns);
    expect(r.code).toBe(EXIT.notFound);
    expect(r.stderr).toContain(`tenant ${ns}/nobody not found in cluster https://`);
  });
});
