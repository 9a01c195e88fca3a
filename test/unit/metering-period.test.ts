// Quota period boundaries are UTC calendar days and months, whatever the local time zone.
import { describe, expect, it } from 'vitest';
import { periodEnd, periodStart } from '../../dataplane/metering/period.ts';

const at = (iso: string): number => Date.parse(iso);

describe('quota periods', () => {
  it('starts Daily periods at 00:00 UTC and ends them at the next midnight', () => {
    expect(periodStart('Daily', at('2030-03-14T23:59:59.999Z'))).toBe('2030-03-14T00:00:00.000Z');
    expect(periodEnd('Daily', at('2030-03-14T00:00:00.000Z'))).toEqual(new Date('2030-03-15T00:00:00Z'));
    expect(periodEnd('Daily', at('2030-12-31T12:00:00Z'))).toEqual(new Date('2031-01-01T00:00:00Z'));
  });

  it('starts Monthly periods on the 1st and handles short months, leap years and December', () => {
    expect(periodStart('Monthly', at('2028-02-29T10:00:00Z'))).toBe('2028-02-01T00:00:00.000Z');
    expect(periodEnd('Monthly', at('2028-02-29T10:00:00Z'))).toEqual(new Date('2028-03-01T00:00:00Z'));
    expect(periodEnd('Monthly', at('2030-12-31T23:59:59Z'))).toEqual(new Date('2031-01-01T00:00:00Z'));
    expect(periodStart('Monthly', at('2030-03-01T00:00:00Z'))).toBe('2030-03-01T00:00:00.000Z');
  });

  it('never ends a None period', () => {
    expect(periodStart('None', at('2030-03-14T10:00:00Z'))).toBe('-infinity');
    expect(periodEnd('None', at('2030-03-14T10:00:00Z'))).toBeNull();
  });
});
