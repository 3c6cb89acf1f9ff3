/**
 * A small Prometheus registry: gauges computed on scrape, and counters. Enough for the
 * tunnel's handful of series without another dependency.
 */
import { PerformanceObserver, constants, type NodeGCPerformanceDetail, type PerformanceEntry } from 'node:perf_hooks';

type Labels = Record<string, string>;

interface Series {
  name: string;
  help: string;
  type: 'gauge' | 'counter';
  collect(): Array<[Labels, number]>;
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

  /**
   * Process resident memory and the V8 heap, under the names Prometheus client libraries use,
   * so a resident size that stays high can be told apart from live JS objects.
   */
  processMetrics(): void {
    const memory = (name: string, help: string, read: () => number) =>
      this.series.push({ name, help, type: 'gauge', collect: () => [[{}, read()]] });
    memory('process_resident_memory_bytes', 'Resident memory size in bytes.', () => process.memoryUsage.rss());
    memory('nodejs_heap_size_total_bytes', 'V8 heap size in bytes.', () => process.memoryUsage().heapTotal);
    memory('nodejs_heap_size_used_bytes', 'V8 heap used in bytes.', () => process.memoryUsage().heapUsed);
    memory('nodejs_external_memory_bytes', 'Memory of C++ objects bound to JS objects, buffers included, in bytes.', () => process.memoryUsage().external);
    const gc = gcCounters();
    this.series.push({ name: 'nodejs_gc_runs_total', help: 'Garbage collections by kind (major: a full mark-compact).', type: 'counter', collect: () => gc.runs.collect() });
    this.series.push({ name: 'nodejs_gc_seconds_total', help: 'Time in garbage collection pauses by kind, in seconds.', type: 'counter', collect: () => gc.seconds.collect() });
  }

  /** The Prometheus text exposition format. */
  render(): string {
    const lines: string[] = [];
    for (const s of this.series) {
      lines.push(`# HELP ${s.name} ${s.help}`, `# TYPE ${s.name} ${s.type}`);
      for (const [labels, value] of s.collect()) lines.push(`${s.name}${formatLabels(labels)} ${value}`);
    }
    return lines.join('\n') + '\n';
  }
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
