/**
 * Figures (one measured value with its baseline, ratio and target), the progress printer,
 * and the final table.
 */
import { performance } from 'node:perf_hooks';

export interface Target {
  /** What the target applies to: the value itself, or value / baseline. */
  on: 'value' | 'ratio';
  op: '>=' | '<=';
  limit: number;
}

export interface Figure {
  scenario: string;
  figure: string;
  /** null when the measurement failed. */
  value: number | null;
  unit: string;
  baseline?: { label: string; value: number | null };
  ratio?: number;
  target?: Target;
  /** Set when there is a target and a value. */
  ok?: boolean;
  /** Anything the reader should know about this figure (cut short by a time limit, errors). */
  note?: string;
  /** The run lost or changed bytes somewhere: the figure is no result. */
  void?: boolean;
}

export interface FigureInput {
  figure: string;
  value: number | null;
  unit: string;
  baseline?: { label: string; value: number | null };
  target?: Target;
  note?: string;
}

export function makeFigure(scenario: string, input: FigureInput): Figure {
  const fig: Figure = { scenario, ...input };
  const base = input.baseline?.value;
  if (input.value !== null && base !== undefined && base !== null && base !== 0) fig.ratio = input.value / base;
  if (input.target && input.value !== null) {
    const measured = input.target.on === 'ratio' ? fig.ratio : input.value;
    if (measured !== undefined) fig.ok = input.target.op === '>=' ? measured >= input.target.limit : measured <= input.target.limit;
    else fig.ok = false;
  }
  return fig;
}

export class Progress {
  private index = 0;
  private readonly started = performance.now();

  constructor(public total: number) {}

  step(scenario: string, label: string): void {
    this.index++;
    const elapsed = ((performance.now() - this.started) / 1000).toFixed(0).padStart(4);
    process.stderr.write(`[${this.index}/${this.total}] ${elapsed}s  ${scenario}: ${label} ...\n`);
  }

  info(text: string): void {
    process.stderr.write(`            ${text}\n`);
  }

  /** After a scenario that ended early: count its unreached steps as done. */
  skipTo(index: number): void {
    this.index = Math.max(this.index, index);
  }

  get current(): number {
    return this.index;
  }
}

function formatNumber(value: number, unit: string): string {
  const abs = Math.abs(value);
  const digits = unit === 'x' ? 2 : abs >= 1000 ? 0 : abs >= 100 ? 1 : abs >= 10 ? 1 : 2;
  return value.toFixed(digits);
}

export function formatValue(value: number | null | undefined, unit: string): string {
  if (value === null || value === undefined || Number.isNaN(value)) return 'n/a';
  return `${formatNumber(value, unit)} ${unit}`;
}

function formatTarget(target: Target | undefined, unit: string): string {
  if (!target) return '';
  return target.on === 'ratio' ? `ratio ${target.op} ${target.limit}` : `${target.op} ${target.limit} ${unit}`;
}

function status(fig: Figure): string {
  if (!fig.target) return '';
  if (fig.void) return 'VOID';
  if (fig.value === null) return 'FAILED';
  return fig.ok ? 'ok' : 'MISS <--';
}

/** The results table, with footnotes for figures that carry a note. */
export function renderTable(figures: Figure[]): string {
  const header = ['scenario', 'figure', 'value', 'baseline', 'ratio', 'target', 'ok?'];
  const notes: string[] = [];
  const rows = figures.map((f) => {
    let name = f.figure;
    if (f.note) {
      notes.push(f.note);
      name += ` [${notes.length}]`;
    }
    return [
      f.scenario,
      name,
      formatValue(f.value, f.unit),
      f.baseline ? `${formatValue(f.baseline.value, f.unit)} (${f.baseline.label})` : '',
      f.ratio !== undefined ? f.ratio.toFixed(2) : '',
      formatTarget(f.target, f.unit),
      status(f),
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 2 || i === 4 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd();
  const out = [line(header), widths.map((w) => '-'.repeat(w)).join('  ')];
  let previous = '';
  for (const row of rows) {
    if (previous && row[0] !== previous) out.push('');
    previous = row[0]!;
    out.push(line(row));
  }
  if (notes.length > 0) {
    out.push('', 'notes:');
    notes.forEach((n, i) => out.push(`  [${i + 1}] ${n}`));
  }
  const targeted = figures.filter((f) => f.target);
  const met = targeted.filter((f) => f.ok === true);
  const missed = targeted.filter((f) => f.ok !== true);
  out.push('', `targets met: ${met.length} of ${targeted.length}`);
  if (missed.length > 0) {
    out.push('MISSED:');
    for (const f of missed) {
      const measured = f.value === null ? 'no value' : f.target!.on === 'ratio' ? `ratio ${f.ratio?.toFixed(2) ?? 'n/a'}` : formatValue(f.value, f.unit);
      out.push(`  ${f.scenario} / ${f.figure}: ${measured}, target ${formatTarget(f.target, f.unit)}`);
    }
  }
  return out.join('\n');
}
