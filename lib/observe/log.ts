/**
 * A small leveled logger writing one line per event to stderr. Two formats:
 *
 * - text (the default), in the spirit of klog:
 *   `I 2026-11-25T19:50:01.123Z server] agent connected agentID=abc host=c1`, fields as
 *   key=value so operators can grep them;
 * - json: one JSON object per line, `{"time":"…","level":"info","component":"server",
 *   "msg":"agent connected","agentID":"abc"}`, for log pipelines that parse lines.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFormat = 'text' | 'json';

export const LOG_FORMATS: readonly LogFormat[] = ['text', 'json'];

const LEVEL_ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
const LEVEL_MARK: Record<LogLevel, string> = { debug: 'D', info: 'I', warn: 'W', error: 'E' };

let threshold: LogLevel = (process.env.TUNNEL_LOG_LEVEL as LogLevel) in LEVEL_ORDER
  ? (process.env.TUNNEL_LOG_LEVEL as LogLevel)
  : 'info';
let format: LogFormat = 'text';

export function setLogLevel(level: LogLevel): void {
  threshold = level;
}

export function setLogFormat(value: LogFormat): void {
  format = value;
}

export function logFormat(): LogFormat {
  return format;
}

export type LogFields = Record<string, unknown>;

function formatValue(value: unknown): string {
  if (value instanceof Error) return JSON.stringify(value.message);
  const text = typeof value === 'string' ? value : String(value);
  return /[\s"=]/.test(text) || text === '' ? JSON.stringify(text) : text;
}

/** A field's value as JSON takes it: errors by their message, bigints and the like as text. */
function jsonValue(value: unknown): unknown {
  if (value instanceof Error) return value.message;
  if (value === null || typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') return value;
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return value.map(jsonValue);
  if (typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) if (v !== undefined) out[k] = jsonValue(v);
    return out;
  }
  if (typeof value === 'bigint' || typeof value === 'symbol') return value.toString();
  return `[${typeof value}]`;
}

/** Keys of a JSON line that fields may not take over. */
const RESERVED = new Set(['time', 'level', 'component', 'msg']);

/** One log line in the current format, without its newline. */
export function formatLine(level: LogLevel, component: string, message: string, fields?: LogFields): string {
  if (format === 'json') {
    const entry: Record<string, unknown> = { time: new Date().toISOString(), level, component, msg: message };
    if (fields) {
      for (const [key, value] of Object.entries(fields)) {
        if (value !== undefined) entry[RESERVED.has(key) ? `field.${key}` : key] = jsonValue(value);
      }
    }
    return JSON.stringify(entry);
  }
  let line = `${LEVEL_MARK[level]} ${new Date().toISOString()} ${component}] ${message}`;
  if (fields) {
    for (const [key, value] of Object.entries(fields)) {
      if (value !== undefined) line += ` ${key}=${formatValue(value)}`;
    }
  }
  return line;
}

export class Logger {
  constructor(private readonly component: string) {}

  child(component: string): Logger {
    return new Logger(`${this.component}/${component}`);
  }

  debug(message: string, fields?: LogFields): void { this.write('debug', message, fields); }
  info(message: string, fields?: LogFields): void { this.write('info', message, fields); }
  warn(message: string, fields?: LogFields): void { this.write('warn', message, fields); }
  error(message: string, fields?: LogFields): void { this.write('error', message, fields); }

  enabled(level: LogLevel): boolean {
    return LEVEL_ORDER[level] >= LEVEL_ORDER[threshold];
  }

  private write(level: LogLevel, message: string, fields?: LogFields): void {
    if (!this.enabled(level)) return;
    process.stderr.write(formatLine(level, this.component, message, fields) + '\n');
  }
}

export function logger(component: string): Logger {
  return new Logger(component);
}

/**
 * A line a binary prints about itself whatever the level (a startup error, a signal): `text`
 * as it is in the text format, and a JSON line of `message` in json, so that every line of
 * the output parses.
 */
export function processLine(component: string, level: LogLevel, message: string, text: string): string {
  return format === 'json' ? formatLine(level, component, message) + '\n' : `${text}\n`;
}
