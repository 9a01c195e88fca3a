// Parses the Go-style durations the CRDs accept ("500ms", "30s", "1h30m") into milliseconds.
const PART = /([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)/g;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

export function parseDurationMs(text: string): number {
  if (!/^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$/.test(text)) {
    throw new Error(
      `invalid duration ${JSON.stringify(text)}: use a number and a unit (ms, s, m, h), e.g. 30s or 1h30m`,
    );
  }
  let total = 0;
  for (const [, value, unit] of text.matchAll(PART)) total += Number(value) * (UNIT_MS[unit!] ?? 0);
  return Math.round(total);
}
