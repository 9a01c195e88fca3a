// The metering writer: the Postgres side of UsageSink. record() only appends to a bounded in-memory
// buffer; a flush loop writes batches, each batch ONE statement (one round trip) that inserts the
// events with ON CONFLICT DO NOTHING and adds the rows it actually inserted to the daily roll-ups.
// A statement is atomic, so a flush that failed or whose answer was lost is simply sent again: the
// events already stored conflict and are skipped, and the roll-ups never count them twice.
//
// Outage policy: failed batches stay at the head of the buffer and are retried with backoff; new
// events keep buffering up to maxBuffer, then are dropped and counted. canAdmit(failOpen) lets
// admission refuse fail-closed tenants before that point (see docs/metering.md).
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { pino, type Logger } from 'pino';
import type pg from 'pg';
import { addUtcDays, ensureUsagePartitions, utcDay } from './migrate.ts';
import type { UsageEvent, UsageSink } from './usage.ts';

export interface MeteringWriterOptions {
  /** The pool to write on; the caller owns it (flushAndClose leaves it open). */
  pool: pg.Pool;
  /** Flush at least this often while events are buffered. Default 200 ms. */
  flushIntervalMs?: number;
  /** Events per statement; a full batch is flushed at once. Default 2,000. */
  maxBatch?: number;
  /** Buffer bound; beyond it events are dropped and counted. Default 100,000. */
  maxBuffer?: number;
  /** Retry backoff after a failed flush: doubles from min to max, with jitter. Default 100 ms..5 s. */
  retryMinMs?: number;
  retryMaxMs?: number;
  registry?: Registry;
  logger?: Logger;
  /** Clock for partition creation ahead of midnight. */
  now?: () => number;
}

export interface FlushOutcome {
  /** Events taken from the buffer by this flush (0 when idle). */
  events: number;
  /** Of those, rows inserted; the rest were already stored (retries, duplicates). */
  inserted: number;
}

export interface CloseOutcome {
  written: number;
  /** Events still buffered when the deadline passed: lost. */
  lost: number;
}

export interface MeteringWriter extends UsageSink {
  /** Write one batch now (the loop does this by itself). Rejects when the statement fails. */
  flush(): Promise<FlushOutcome>;
  /** For SIGTERM, after the server drained: refuse new events, write everything, close. */
  flushAndClose(timeoutMs?: number): Promise<CloseOutcome>;
  /** False while flushes are failing. */
  isHealthy(): boolean;
  /**
   * Whether admission may accept a request of a tenant with this failure policy. Fail-open tenants
   * always; fail-closed tenants only while the buffer has room for their events, keeping one batch
   * of headroom for requests already in flight.
   */
  canAdmit(failOpen: boolean): boolean;
  /** Buffered events, including a batch being written. */
  depth(): number;
}

// Arrays in, one statement out. unnest keeps the statement text and its 18 parameters constant
// whatever the batch size, so it is parsed and planned once per connection (a named prepared
// statement). Roll-up rows are sorted so that concurrent writers lock them in the same order.
// The arrays arrive as array literals this module writes itself (see arrayLiterals), and times as
// epoch milliseconds, converted exactly (integer microseconds) in SQL.
const INSERT_BATCH = `
WITH batch AS (
  SELECT request_id, timestamptz 'epoch' + time_ms * interval '1 millisecond' AS time, tenant, key_id,
         user_id, backend, endpoint, route, model, status, input_tokens, output_tokens, tokens_estimated,
         bytes_in, bytes_out, duration_ms, ttfb_ms, credits
  FROM unnest(
    $1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::smallint[], $11::integer[], $12::integer[], $13::boolean[],
    $14::bigint[], $15::bigint[], $16::integer[], $17::integer[], $18::numeric[]
  ) AS b(request_id, time_ms, tenant, key_id, user_id, backend, endpoint, route, model, status,
         input_tokens, output_tokens, tokens_estimated, bytes_in, bytes_out, duration_ms, ttfb_ms,
         credits)
),
inserted AS (
  INSERT INTO usage_events
  SELECT * FROM batch
  ON CONFLICT DO NOTHING
  RETURNING time, tenant, key_id, backend, model, status, input_tokens, output_tokens, credits
),
rolled AS (
  INSERT INTO usage_daily AS d
    (tenant, day, key_id, backend, model, requests, input_tokens, output_tokens, credits, errors)
  SELECT tenant, (time AT TIME ZONE 'UTC')::date, coalesce(key_id, ''), coalesce(backend, ''),
         coalesce(model, ''), count(*), sum(input_tokens), sum(output_tokens), sum(credits),
         count(*) FILTER (WHERE status >= 500 OR status = 0)
  FROM inserted
  GROUP BY 1, 2, 3, 4, 5
  ORDER BY 1, 2, 3, 4, 5
  ON CONFLICT (tenant, day, key_id, backend, model) DO UPDATE SET
    requests = d.requests + excluded.requests,
    input_tokens = d.input_tokens + excluded.input_tokens,
    output_tokens = d.output_tokens + excluded.output_tokens,
    credits = d.credits + excluded.credits,
    errors = d.errors + excluded.errors
  RETURNING 1
)
SELECT (SELECT count(*) FROM inserted)::int AS inserted`;

/** A text value as a quoted array element: "..." with \ and " escaped, NUL dropped. */
function textElement(v: string | null): string {
  if (v === null) return 'NULL';
  // Characters a quoted array element must escape, and NUL, which Postgres text cannot hold.
  if (!v.includes('"') && !v.includes('\\') && !v.includes('\u0000')) return '"' + v + '"';
  return '"' + v.replaceAll('\u0000', '').replaceAll('\\', '\\\\').replaceAll('"', '\\"') + '"';
}

/** A finite number as an array element (non-finite ones, which no event should carry, as 0). */
function numberElement(v: number | null): string {
  if (v === null) return 'NULL';
  return Number.isFinite(v) ? String(v) : '0';
}

/**
 * The batch as 18 Postgres array literals ('{...}'), in usage_events column order. pg would build
 * these from JS arrays with a generic per-element walk (type checks, regex escapes, Date formatting
 * in local time); writing them directly is several times cheaper per event, and the work is per
 * batch, off the request path.
 */
function arrayLiterals(events: readonly UsageEvent[]): string[] {
  const n = events.length;
  // One array of elements per column, joined once: cheaper than growing 18 strings by concatenation
  // (whose ropes are flattened again when pg encodes them).
  const cols = Array.from({ length: 18 }, () => new Array<string>(n));
  for (let i = 0; i < n; i++) {
    const e = events[i]!;
    cols[0]![i] = textElement(e.requestId);
    cols[1]![i] = numberElement(Math.round(e.time));
    cols[2]![i] = textElement(e.tenant);
    cols[3]![i] = textElement(e.keyId);
    cols[4]![i] = textElement(e.userId);
    cols[5]![i] = textElement(e.backend);
    cols[6]![i] = textElement(e.endpoint);
    cols[7]![i] = textElement(e.route);
    cols[8]![i] = textElement(e.model);
    cols[9]![i] = numberElement(e.status);
    cols[10]![i] = numberElement(e.inputTokens);
    cols[11]![i] = numberElement(e.outputTokens);
    cols[12]![i] = e.tokensEstimated ? 't' : 'f';
    cols[13]![i] = numberElement(e.bytesIn);
    cols[14]![i] = numberElement(e.bytesOut);
    cols[15]![i] = numberElement(Math.round(e.durationMs));
    cols[16]![i] = e.ttfbMs === null ? 'NULL' : numberElement(Math.round(e.ttfbMs));
    cols[17]![i] = numberElement(e.credits);
  }
  return cols.map((c) => '{' + c.join(',') + '}');
}

/** Write a batch in one statement; returns how many rows were new. Exported for the benchmark. */
export async function insertUsageBatch(
  db: pg.Pool | pg.ClientBase,
  events: readonly UsageEvent[],
): Promise<number> {
  const result = await db.query<{ inserted: number }>({
    name: 'gpugate_usage_batch',
    text: INSERT_BATCH,
    values: arrayLiterals(events),
  });
  return result.rows[0]?.inserted ?? 0;
}

/**
 * An idle pooled connection that loses its server (Postgres restarts, fails over) makes the pool emit
 * 'error', which kills the process when nobody listens. The next statement reports the outage anyway.
 */
export function guardIdleErrors(pool: pg.Pool, logger: Logger): void {
  if (pool.listenerCount('error') > 0) return;
  pool.on('error', (err) => logger.warn({ err }, 'idle Postgres connection lost'));
}

export function createMeteringWriter(options: MeteringWriterOptions): MeteringWriter {
  const pool = options.pool;
  const flushIntervalMs = options.flushIntervalMs ?? 200;
  const maxBatch = options.maxBatch ?? 2000;
  const maxBuffer = Math.max(options.maxBuffer ?? 100_000, maxBatch);
  const retryMinMs = options.retryMinMs ?? 100;
  const retryMaxMs = options.retryMaxMs ?? 5000;
  const logger = options.logger ?? pino({ enabled: false });
  const now = options.now ?? Date.now;
  const registry = options.registry ?? new Registry();
  guardIdleErrors(pool, logger);

  // A queue as an array with a moving head: record() is a push, a flush slices from the head.
  let queue: UsageEvent[] = [];
  let head = 0;
  let inFlight: Promise<FlushOutcome> | null = null;
  let consecutiveFailures = 0;
  let retryAt = 0;
  let closed = false;
  let written = 0;
  const knownDays = new Set<string>();

  const depth = (): number => queue.length - head;

  new Gauge({
    name: 'gpugate_metering_buffer_events',
    help: 'Usage events buffered in memory, waiting to be written to Postgres',
    registers: [registry],
    collect() {
      this.set(depth());
    },
  });
  const flushDuration = new Histogram({
    name: 'gpugate_metering_flush_duration_seconds',
    help: 'Time to write one batch of usage events (one statement), successful or not',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const flushFailures = new Counter({
    name: 'gpugate_metering_flush_failures_total',
    help: 'Batches of usage events whose write failed and will be retried',
    registers: [registry],
  });
  const dropped = new Counter({
    name: 'gpugate_metering_dropped_events_total',
    help: 'Usage events lost: buffer full (Postgres unreachable for long) or recorded after close',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  const droppedFull = dropped.labels('buffer_full');
  const droppedClosed = dropped.labels('closed');
  // Zero from the start, so a query sees a series (and increase() counts the first drop).
  droppedFull.inc(0);
  droppedClosed.inc(0);
  const writtenEvents = new Counter({
    name: 'gpugate_metering_written_events_total',
    help: 'Usage events this writer saw inserted into Postgres (a retry of a batch whose commit answer was lost counts its rows as duplicates)',
    registers: [registry],
  });
  const duplicateEvents = new Counter({
    name: 'gpugate_metering_duplicate_events_total',
    help: 'Usage events skipped because their request id was already stored (retried flushes)',
    registers: [registry],
  });

  async function writeBatch(batch: UsageEvent[]): Promise<number> {
    // Partitions: the batch's days and tomorrow, so midnight never waits on DDL.
    // Day numbers first (a division per event), their 'YYYY-MM-DD' names only for the few distinct ones.
    const dayNumbers = new Set<number>();
    for (const e of batch) dayNumbers.add(Math.floor(e.time / 86_400_000));
    const days = new Set<string>();
    for (const d of dayNumbers) days.add(utcDay(d * 86_400_000));
    days.add(addUtcDays(utcDay(now()), 1));
    const missing = [...days].filter((d) => !knownDays.has(d));
    if (missing.length > 0) {
      await ensureUsagePartitions(pool, missing);
      for (const d of missing) knownDays.add(d);
    }
    return insertUsageBatch(pool, batch);
  }

  async function flushOnce(): Promise<FlushOutcome> {
    const count = Math.min(depth(), maxBatch);
    if (count === 0) return { events: 0, inserted: 0 };
    const batch = queue.slice(head, head + count);
    const stop = flushDuration.startTimer();
    try {
      const inserted = await writeBatch(batch);
      stop();
      head += count;
      if (head > 4096 && head * 2 > queue.length) {
        queue = queue.slice(head);
        head = 0;
      }
      written += count;
      writtenEvents.inc(inserted);
      duplicateEvents.inc(count - inserted);
      if (consecutiveFailures > 0) {
        logger.info({ failures: consecutiveFailures, depth: depth() }, 'metering writes recovered');
      }
      consecutiveFailures = 0;
      return { events: count, inserted };
    } catch (err) {
      stop();
      flushFailures.inc();
      consecutiveFailures++;
      const backoff = Math.min(retryMaxMs, retryMinMs * 2 ** (consecutiveFailures - 1));
      retryAt = Date.now() + backoff / 2 + Math.random() * (backoff / 2);
      const log = consecutiveFailures === 1 || consecutiveFailures % 20 === 0 ? logger.warn : logger.debug;
      log.call(
        logger,
        { err, failures: consecutiveFailures, depth: depth() },
        'writing usage events failed; keeping them buffered and retrying',
      );
      throw err;
    }
  }

  function flush(): Promise<FlushOutcome> {
    // One write at a time: a second caller waits for the batch in flight, then writes its own.
    const previous = inFlight ?? Promise.resolve({ events: 0, inserted: 0 });
    const next = previous.catch(() => undefined).then(flushOnce);
    inFlight = next;
    void next
      .finally(() => {
        if (inFlight === next) inFlight = null;
      })
      .catch(() => undefined);
    return next;
  }

  function tick(): void {
    if (inFlight || depth() === 0 || Date.now() < retryAt) return;
    flush().then(
      (outcome) => {
        // Keep up under load: a full batch means more may be waiting.
        if (outcome.events === maxBatch && depth() > 0 && !closed) setImmediate(tick);
      },
      () => undefined,
    );
  }

  const timer = setInterval(tick, flushIntervalMs);
  timer.unref();

  return {
    record(event) {
      if (closed) {
        droppedClosed.inc();
        return;
      }
      if (depth() >= maxBuffer) {
        droppedFull.inc();
        return;
      }
      queue.push(event);
      if (depth() >= maxBatch && !inFlight && Date.now() >= retryAt) tick();
    },
    flush,
    async flushAndClose(timeoutMs = 10_000) {
      closed = true;
      clearInterval(timer);
      const deadline = Date.now() + timeoutMs;
      const before = written;
      while (depth() > 0 && Date.now() < deadline) {
        try {
          await flush();
        } catch {
          const wait = Math.min(Math.max(retryAt - Date.now(), 0), deadline - Date.now());
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        }
      }
      const lost = depth();
      if (lost > 0) {
        logger.error({ lost }, 'usage events not written before the shutdown deadline');
      }
      return { written: written - before, lost };
    },
    isHealthy: () => consecutiveFailures === 0,
    canAdmit: (failOpen) => failOpen || depth() < maxBuffer - maxBatch,
    depth,
  };
}
