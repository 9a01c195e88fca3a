// `gpugate status [backend <name>]`: the fleet view merged across data-plane admin ports
// (operator/aggregate), as a table or JSON. Targets: --admin-url (repeatable) or GPUGATE_ADMIN_URLS,
// token: --admin-token or GPUGATE_PUSH_TOKEN. `status tenant <ns/name>` asks each target's tenant view.
import { aggregateFleet, type AdminTarget } from '../aggregate/aggregate.ts';
import { renderStatus } from '../aggregate/render.ts';
import { usageError, type Command } from './command.ts';

const options = {
  'admin-url': { type: 'string', multiple: true },
  'admin-token': { type: 'string' },
} as const;

const optionHelp = [
  '  --admin-url URL       a data plane admin port (repeatable; also GPUGATE_ADMIN_URLS, comma-separated)',
  '  --admin-token TOKEN   the push token (also GPUGATE_PUSH_TOKEN)',
];

function targets(values: Record<string, unknown>): AdminTarget[] {
  const raw = values['admin-url'];
  const urls = Array.isArray(raw)
    ? (raw as string[])
    : (process.env.GPUGATE_ADMIN_URLS ?? '').split(',').filter((u) => u !== '');
  const token = (values['admin-token'] as string | undefined) ?? process.env.GPUGATE_PUSH_TOKEN;
  if (urls.length === 0)
    throw usageError('--admin-url is required (a data plane admin port, e.g. http://127.0.0.1:9090)');
  if (!token) throw usageError('--admin-token (or GPUGATE_PUSH_TOKEN) is required');
  return urls.map((u) => ({ name: new URL(u).host, adminUrl: u.replace(/\/+$/, ''), token }));
}

const color = () => process.stdout.isTTY === true && !process.env.NO_COLOR;

export const statusCommands: Command[] = [
  {
    path: ['status'],
    summary: 'replicas, revisions and endpoint health across data planes',
    args: [],
    options,
    optionHelp,
    async run(_ctx, _pos, values) {
      const fleet = await aggregateFleet({ targets: targets(values), expectedRevision: null });
      return { text: renderStatus(fleet, { color: color() }), json: fleet };
    },
  },
  {
    path: ['status', 'backend'],
    summary: 'one backend’s endpoints across data planes',
    args: ['<name>'],
    options,
    optionHelp,
    async run(_ctx, [name], values) {
      const fleet = await aggregateFleet({ targets: targets(values), expectedRevision: null });
      const backends = fleet.backends.filter((b) => b.id === name || b.id.endsWith(`/${name}`));
      return {
        text: renderStatus(fleet, { color: color(), backend: name as string }),
        json: { ...fleet, backends },
      };
    },
  },
  {
    path: ['status', 'tenant'],
    summary: 'a tenant’s limits, buckets and quota on each data plane',
    args: ['<ns/name>'],
    options,
    optionHelp,
    async run(_ctx, [name], values) {
      const per = await Promise.all(
        targets(values).map(async (t) => {
          const res = await fetch(`${t.adminUrl}/admin/tenants/${name}`, {
            headers: { authorization: `Bearer ${t.token}` },
          }).catch((err: unknown) => err as Error);
          if (res instanceof Error) return { target: t.name, error: res.message, view: null };
          const view = (await res.json()) as Record<string, unknown>;
          return res.ok
            ? { target: t.name, error: null, view }
            : { target: t.name, error: `answered ${res.status}`, view: null };
        }),
      );
      const text = per
        .map((p) =>
          p.view
            ? `${p.target}: ${JSON.stringify({ limits: p.view.limits, quota: p.view.quota })}`
            : `${p.target}: ${p.error}`,
        )
        .join('\n');
      return { text, json: per };
    },
  },
];
