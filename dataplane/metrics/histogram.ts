// A Prometheus histogram whose observations on the request path are plain additions into a bucket
// array, exported in prom-client's own format when the registry collects. prom-client's Histogram
// builds a label object, hashes it and turns the bucket bound into a property name on every observe,
// which the request path paid twice per request (duration and time to first byte).
//
// The exposition (names, labels and their order, buckets, +Inf, _sum, _count, the JSON form) is
// prom-client's, byte for byte: test/unit/tally-histogram.test.ts compares both for the same
// observations. A label set is exported from its first observation on, as prom-client does.
import type { Metric, MetricValueWithName, Registry } from 'prom-client';

/** What the request path holds: one label set's observe. */
export interface HistogramChild {
  observe(value: number): void;
}

class Series<L extends string> implements HistogramChild {
  readonly labels: Readonly<Record<L, string>>;
  readonly #bounds: readonly number[];
  /** Observations per bucket (not cumulative); the last slot counts those above every bound. */
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(labels: Readonly<Record<L, string>>, bounds: readonly number[]) {
    this.labels = labels;
    this.#bounds = bounds;
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }

  observe(value: number): void {
    // prom-client throws on these; the request path must not, and they carry no duration.
    if (!Number.isFinite(value)) return;
    const bounds = this.#bounds;
    let i = 0;
    while (i < bounds.length && value > (bounds[i] as number)) i++;
    (this.counts[i] as number)++;
    this.sum += value;
    this.count++;
  }
}

/** What prom-client's get() and getForPromString() return. */
interface Exported<V> {
  name: string;
  help: string;
  type: 'histogram';
  values: V[];
  aggregator: 'sum';
}

interface SharedValue extends MetricValueWithName<string> {
  sharedLabels: Readonly<Record<string, string>>;
  exemplar?: null;
}

export class TallyHistogram<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram' as const;
  readonly aggregator = 'sum' as const;
  readonly #bounds: readonly number[];
  readonly #series = new Map<string, Series<L>>();

  constructor(config: {
    name: string;
    help: string;
    labelNames: readonly L[];
    buckets: readonly number[];
    registers: readonly Registry[];
  }) {
    this.name = config.name;
    this.help = config.help;
    this.#bounds = [...config.buckets].sort((a, b) => a - b);
    for (const r of config.registers) r.registerMetric(this as unknown as Metric);
  }

  /** The child for `key` (one string per label set, built by the caller), created with `labels` on first use. */
  child(key: string, labels: Readonly<Record<L, string>>): HistogramChild {
    let s = this.#series.get(key);
    if (s === undefined) {
      s = new Series(labels, this.#bounds);
      this.#series.set(key, s);
    }
    return s;
  }

  /** Forgets every observation; children stay valid and are exported again once observed. */
  reset(): void {
    for (const s of this.#series.values()) {
      s.counts.fill(0);
      s.sum = 0;
      s.count = 0;
    }
  }

  /** prom-client's text exposition reads this form: bucket labels apart from the series' labels. */
  getForPromString(): Exported<SharedValue> {
    const values: SharedValue[] = [];
    const bucket = `${this.name}_bucket`;
    for (const s of this.#series.values()) {
      if (s.count === 0) continue;
      let cumulative = 0;
      for (let i = 0; i < this.#bounds.length; i++) {
        cumulative += s.counts[i] as number;
        values.push({
          labels: { le: this.#bounds[i] as number },
          sharedLabels: s.labels,
          value: cumulative,
          metricName: bucket,
          exemplar: null,
        });
      }
      values.push(
        {
          labels: { le: '+Inf' },
          sharedLabels: s.labels,
          value: s.count,
          metricName: bucket,
          exemplar: null,
        },
        {
          labels: {},
          sharedLabels: s.labels,
          value: s.sum,
          metricName: `${this.name}_sum`,
          exemplar: undefined,
        },
        {
          labels: {},
          sharedLabels: s.labels,
          value: s.count,
          metricName: `${this.name}_count`,
          exemplar: undefined,
        },
      );
    }
    return {
      name: this.name,
      help: this.help,
      type: this.type,
      values,
      aggregator: this.aggregator,
    };
  }

  /** The JSON form (getMetricsAsJSON): every value's labels with the series' labels merged in. */
  get(): Exported<MetricValueWithName<string>> {
    const data = this.getForPromString();
    return {
      ...data,
      values: data.values.map(({ sharedLabels, labels, ...rest }) => ({
        ...rest,
        labels: { ...labels, ...sharedLabels },
      })),
    };
  }
}
