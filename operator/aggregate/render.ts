// The fleet view as a compact table for a terminal; colour only when asked (the CLI asks on a TTY).
import type { FleetStatus, TenantFleet } from './aggregate.ts';

const paint = (on: boolean, code: number, s: string) => (on ? `\u001b[${code}m${s}\u001b[0m` : s);

function columns(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows
    .map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  '))
    .join('\n');
}

export function renderStatus(fleet: FleetStatus, opts: { color: boolean; backend?: string }): string {
  const c = opts.color;
  const out: string[] = [];
  out.push(
    columns([
      ['REPLICA', 'REVISION', 'VERSION', 'SNAPSHOT AGE', 'STATE'],
      ...fleet.replicas.map((r) => [
        r.target,
        r.revision?.slice(0, 12) ?? '-',
        r.version ?? '-',
        r.snapshotAgeMs === null ? '-' : `${Math.round(r.snapshotAgeMs / 1000)}s`,
        !r.reachable
          ? paint(c, 31, `unreachable: ${r.error}`)
          : r.revision !== (r.expectedRevision ?? fleet.expectedRevision)
            ? paint(c, 33, 'old revision')
            : paint(c, 32, 'ok'),
      ]),
    ]),
  );
  const rows = [['BACKEND', 'ENDPOINT', 'URL', 'STATE']];
  for (const b of fleet.backends) {
    if (opts.backend && b.id !== opts.backend && !b.id.endsWith(`/${opts.backend}`)) continue;
    for (const e of b.endpoints) {
      const states = Object.entries(e.states);
      const same = new Set(states.map(([, s]) => s.state)).size === 1;
      const text = same
        ? `${states[0]?.[1].state ?? '-'} on ${states.length}`
        : states.map(([t, s]) => `${t}=${s.state}`).join(' ');
      const colour = !same ? 33 : states[0]?.[1].state === 'healthy' ? 32 : 31;
      const chain = e.chain
        ? e.chain.reachable
          ? ` (gateway ${e.chain.revision?.slice(0, 12) ?? 'without snapshot'})`
          : ` (gateway: ${e.chain.error})`
        : '';
      rows.push([b.id, e.id, e.url, paint(c, colour, text) + chain]);
      // The chained gateway's own backends, one level down, as it sees them.
      for (const cb of e.chain?.backends ?? [])
        for (const ce of cb.endpoints)
          rows.push([
            `  > ${cb.id}`,
            ce.id,
            ce.url,
            paint(c, ce.state === 'healthy' ? 32 : 31, ce.state) + (ce.reason ? ` (${ce.reason})` : ''),
          ]);
    }
  }
  out.push('', columns(rows));
  if (fleet.disagreements.length > 0) {
    out.push('', paint(c, 33, `${fleet.disagreements.length} disagreement(s):`));
    for (const d of fleet.disagreements) {
      if (d.kind === 'revision')
        out.push(
          `  ${d.target} serves ${d.revision?.slice(0, 12) ?? 'no snapshot'}, expected ${d.expected.slice(0, 12)}`,
        );
      else if (d.kind === 'unreachable') out.push(`  ${d.target} unreachable: ${d.error}`);
      else
        out.push(
          `  ${d.backend} ${d.endpoint}: ${Object.entries(d.states)
            .map(([t, s]) => `${t}=${s}`)
            .join(', ')}`,
        );
    }
  }
  return out.join('\n');
}

const dash = (v: string | number | null | undefined) => (v === null || v === undefined ? '-' : String(v));
const num = (n: number) => (Number.isInteger(n) ? String(n) : n.toFixed(2).replace(/\.?0+$/, ''));

/** One tenant across replicas: its configured limits and quota once, then each replica's buckets and lease. */
export function renderTenant(fleet: TenantFleet, opts: { color: boolean }): string {
  const c = opts.color;
  const first = fleet.replicas.find((r) => r.view)?.view ?? null;
  const out: string[] = [];
  if (!first) {
    out.push(`tenant ${fleet.tenant}: no replica answered with its view`);
  } else {
    const conf = first.limits.configured;
    const q = first.quota;
    const balance = fleet.replicas.find((r) => r.view?.quota?.balance)?.view?.quota?.balance ?? null;
    const balanceError = fleet.replicas.find((r) => r.view?.quota?.balanceError)?.view?.quota?.balanceError;
    out.push(
      columns([
        ['TENANT', fleet.tenant],
        ['SUSPENDED', first.suspended ? paint(c, 31, 'yes') : 'no'],
        [
          'LIMITS',
          `requests/min ${dash(conf.requestsPerMinute)}, tokens/min ${dash(conf.tokensPerMinute)}, concurrent ${dash(conf.concurrentRequests)}`,
        ],
        [
          'QUOTA',
          !q
            ? 'none'
            : balance
              ? `${num(balance.remaining)} of ${num(balance.limit + balance.toppedUp)} credits left (${q.period}; spent ${num(balance.spent)}, ${num(balance.reserved)} held in leases)`
              : `${num(q.credits)} credits ${q.period}; balance ${balanceError ? `unreadable: ${balanceError}` : 'not read (no usage database, or nothing leased yet)'}`,
        ],
      ]),
    );
  }
  const bucket = (b: { limitPerMinute: number; remaining: number } | null | undefined) =>
    // Whole requests/tokens: a bucket refills continuously, the fraction only makes the column jitter.
    b ? `${Math.floor(b.remaining)}/${num(b.limitPerMinute)}` : '-';
  const rows = [['REPLICA', 'REVISION', 'REQUESTS LEFT', 'TOKENS LEFT', 'CONCURRENT', 'LEASED', 'STATE']];
  for (const r of fleet.replicas) {
    const v = r.view;
    const rep = v?.limits.replica ?? null;
    rows.push([
      r.target,
      v?.revision.slice(0, 12) ?? '-',
      bucket(rep?.requests),
      bucket(rep?.tokens),
      rep && rep.concurrent.limit > 0 ? `${rep.concurrent.inflight}/${rep.concurrent.limit}` : '-',
      v?.quota?.leasedHere === null || v?.quota?.leasedHere === undefined ? '-' : num(v.quota.leasedHere),
      v ? paint(c, 32, 'ok') : paint(c, 31, r.reachable ? (r.error ?? '') : `unreachable: ${r.error}`),
    ]);
  }
  out.push('', columns(rows));
  if (first && first.keys.length > 0) {
    out.push(
      '',
      columns([
        ['KEY PREFIX', 'ID', 'STATE', 'EXPIRES'],
        ...first.keys.map((k) => [
          k.prefix,
          k.id,
          k.disabled ? paint(c, 31, 'disabled') : 'active',
          k.expiresAt ?? 'never',
        ]),
      ]),
    );
  }
  return out.join('\n');
}
