/**
 * A small Prometheus registry: gauges computed on scrape, counters and histograms. Enough
 * for the tunnel's handful of series without another dependency.
 */
import { PerformanceObserver, constants, type NodeGCPerformanceDetail, type PerformanceEntry } from 'node:perf_hooks';

type Labels = Record<string, string>;

/** A sample's labels and value, and for a histogram the suffix of its name (_bucket, _sum, _count). */
type Sample = [Labels, number] | [Labels, number, string];

interface Series {
  name: string;
  help: string;
  type: 'gauge' | 'counter' | 'histogram';
  collect(): Sample[];
}

function formatLabels(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return '';
  return `{${entries.map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',')}}`;
}

export class Counter {
  private readonly values = new Map<string, [Labels, number]>();

  inc(labels: Labels = {}, by = 1): void {
    const key = JSON.stringify(labels);
    const entry = this.values.get(key);
    if (entry) entry[1] += by;
    else this.values.set(key, [labels, by]);
  }

  get(labels: Labels = {}): number {
    return this.values.get(JSON.stringify(labels))?.[1] ?? 0;
  }

  collect(): Array<[Labels, number]> {
    return [...this.values.values()];
  }
}

/**
 * Observations counted into buckets (upper bounds, in increasing order), as Prometheus
 * histograms are. Observing costs a walk over the few bounds and two additions.
 */
export class Histogram {
  /** Per bucket, not cumulative; the last one is +Inf. */
  private readonly counts: number[];
  private sum = 0;
  private count = 0;

  constructor(readonly buckets: readonly number[]) {
    this.counts = new Array<number>(buckets.length + 1).fill(0);
  }

  observe(value: number): void {
    let i = 0;
    while (i < this.buckets.length && value > this.buckets[i]) i++;
    this.counts[i]++;
    this.sum += value;
    this.count++;
  }

  /** Observations so far, and their sum. */
  get observed(): { count: number; sum: number } {
    return { count: this.count, sum: this.sum };
  }

  collect(): Sample[] {
    const samples: Sample[] = [];
    let cumulative = 0;
    this.buckets.forEach((bound, i) => {
      cumulative += this.counts[i];
      samples.push([{ le: String(bound) }, cumulative, '_bucket']);
    });
    samples.push([{ le: '+Inf' }, this.count, '_bucket'], [{}, this.sum, '_sum'], [{}, this.count, '_count']);
    return samples;
  }
}

/**
 * Packets of one segment of the tunnel (e.g. from_agent), counted by packet type in an array
 * indexed by the type: counting a packet is one increment, with no label lookup.
 */
export class PacketCounts {
  /** A typed array: the increment stays one machine operation however large the count grows. */
  readonly byType: Float64Array;

  constructor(size: number) {
    this.byType = new Float64Array(size);
  }
}

/** stream_packets_total{segment,packet_type}: one PacketCounts per segment, labelled when scraped. */
export class PacketCounter {
  private readonly segments = new Map<string, PacketCounts>();

  /** `types` are the packet types to report, with their label values. */
  constructor(private readonly types: ReadonlyArray<[number, string]>) {}

  /** The counts of `segment`, made once: hand them to whatever handles that segment's packets. */
  segment(name: string): PacketCounts {
    let counts = this.segments.get(name);
    if (!counts) {
      counts = new PacketCounts(Math.max(...this.types.map(([type]) => type)) + 1);
      this.segments.set(name, counts);
    }
    return counts;
  }

  get(segment: string, type: number): number {
    return this.segments.get(segment)?.byType[type] ?? 0;
  }

  collect(): Sample[] {
    const samples: Sample[] = [];
    for (const [segment, counts] of this.segments) {
      for (const [type, name] of this.types) samples.push([{ segment, packet_type: name }, counts.byType[type]]);
    }
    return samples;
  }
}

export class MetricsRegistry {
  private readonly series: Series[] = [];

  constructor(private readonly prefix: string) {}

  /** A gauge whose value(s) are read when scraped. */
  gauge(name: string, help: string, read: () => number | Array<[Labels, number]>): void {
    this.series.push({
      name: `${this.prefix}_${name}`,
      help,
      type: 'gauge',
      collect: () => {
        const value = read();
        return typeof value === 'number' ? [[{}, value]] : value;
      },
    });
  }

  counter(name: string, help: string): Counter {
    const counter = new Counter();
    this.series.push({ name: `${this.prefix}_${name}`, help, type: 'counter', collect: () => counter.collect() });
    return counter;
  }

  /** A counter kept elsewhere (a field that only grows), read when scraped. */
  counterOf(name: string, help: string, read: () => number | Array<[Labels, number]>): void {
    this.series.push({
      name: `${this.prefix}_${name}`,
      help,
      type: 'counter',
      collect: () => {
        const value = read();
        return typeof value === 'number' ? [[{}, value]] : value;
      },
    });
  }

  histogram(name: string, help: string, buckets: readonly number[]): Histogram {
    const histogram = new Histogram(buckets);
    this.series.push({ name: `${this.prefix}_${name}`, help, type: 'histogram', collect: () => histogram.collect() });
    return histogram;
  }

  /** Packets by segment and type; `types` are the types reported, with their label values. */
  packetCounter(name: string, help: string, types: ReadonlyArray<[number, string]>): PacketCounter {
    const counter = new PacketCounter(types);
    this.series.push({ name: `${this.prefix}_${name}`, help, type: 'counter', collect: () => counter.collect() });
    return counter;
  }

  /**
   * Process resident memory, the V8 heap and the event loop's active resources, under the
   * names Prometheus client libraries use, so a resident size that stays high can be told
   * apart from live JS objects, and either from sockets or timers left open.
   */
  processMetrics(): void {
    const memory = (name: string, help: string, read: () => number) =>
      this.series.push({ name, help, type: 'gauge', collect: () => [[{}, read()]] });
    memory('process_resident_memory_bytes', 'Resident memory size in bytes.', () => process.memoryUsage.rss());
    memory('nodejs_heap_size_total_bytes', 'V8 heap size in bytes.', () => process.memoryUsage().heapTotal);
    memory('nodejs_heap_size_used_bytes', 'V8 heap used in bytes.', () => process.memoryUsage().heapUsed);
    memory('nodejs_external_memory_bytes', 'Memory of C++ objects bound to JS objects, buffers included, in bytes.', () => process.memoryUsage().external);
    // What keeps the event loop alive, to tell a leak of sockets or timers from one of memory.
    this.series.push({
      name: 'nodejs_active_resources',
      help: 'Resources that keep the event loop alive, by type (e.g. TCPSocketWrap; Timeout counts referenced timers), as process.getActiveResourcesInfo() lists them.',
      type: 'gauge',
      collect: activeResources,
    });
    const gc = gcCounters();
    this.series.push({ name: 'nodejs_gc_runs_total', help: 'Garbage collections by kind (major: a full mark-compact).', type: 'counter', collect: () => gc.runs.collect() });
    this.series.push({ name: 'nodejs_gc_seconds_total', help: 'Time in garbage collection pauses by kind, in seconds.', type: 'counter', collect: () => gc.seconds.collect() });
  }

  /** The Prometheus text exposition format. */
  render(): string {
    const lines: string[] = [];
    for (const s of this.series) {
      lines.push(`# HELP ${s.name} ${s.help}`, `# TYPE ${s.name} ${s.type}`);
      for (const [labels, value, suffix] of s.collect()) lines.push(`${s.name}${suffix ?? ''}${formatLabels(labels)} ${value}`);
    }
    return lines.join('\n') + '\n';
  }
}

/** process.getActiveResourcesInfo(), one entry per resource, counted by type. */
function activeResources(): Sample[] {
  const counts = new Map<string, number>();
  for (const type of process.getActiveResourcesInfo()) counts.set(type, (counts.get(type) ?? 0) + 1);
  return [...counts].map(([type, n]) => [{ type }, n]);
}

const GC_KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};

let gcCounted: { runs: Counter; seconds: Counter } | undefined;

/** Collections of this process, counted once however many registries report them. */
function gcCounters(): { runs: Counter; seconds: Counter } {
  if (!gcCounted) {
    const counted = { runs: new Counter(), seconds: new Counter() };
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        const kind = { kind: GC_KINDS[(entry as PerformanceEntry & { detail?: NodeGCPerformanceDetail }).detail?.kind ?? -1] ?? 'other' };
        counted.runs.inc(kind);
        counted.seconds.inc(kind, entry.duration / 1000);
      }
    }).observe({ entryTypes: ['gc'] });
    gcCounted = counted;
  }
  return gcCounted;
}
