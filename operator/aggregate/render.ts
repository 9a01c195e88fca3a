// The fleet view as a compact table for a terminal; colour only when asked (the CLI asks on a TTY).
import type { FleetStatus } from './aggregate.ts';

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
          : r.revision !== fleet.expectedRevision
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
      const chain = e.chain ? (e.chain.reachable ? ' (gateway)' : ` (gateway: ${e.chain.error})`) : '';
      rows.push([b.id, e.id, e.url, paint(c, colour, text) + chain]);
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
