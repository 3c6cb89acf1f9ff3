/**
 * A small leveled logger writing one line per event to stderr, in the spirit of klog:
 * `I 2026-11-25T19:50:01.123Z server] agent connected agentID=abc host=c1`.
 * Fields are printed as key=value so operators can grep them.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const LEVEL_ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
const LEVEL_MARK: Record<LogLevel, string> = { debug: 'D', info: 'I', warn: 'W', error: 'E' };

let threshold: LogLevel = (process.env.TUNNEL_LOG_LEVEL as LogLevel) in LEVEL_ORDER
  ? (process.env.TUNNEL_LOG_LEVEL as LogLevel)
  : 'info';

export function setLogLevel(level: LogLevel): void {
  threshold = level;
}

export type LogFields = Record<string, unknown>;

function formatValue(value: unknown): string {
  if (value instanceof Error) return JSON.stringify(value.message);
  const text = typeof value === 'string' ? value : String(value);
  return /[\s"=]/.test(text) || text === '' ? JSON.stringify(text) : text;
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
    let line = `${LEVEL_MARK[level]} ${new Date().toISOString()} ${this.component}] ${message}`;
    if (fields) {
      for (const [key, value] of Object.entries(fields)) {
        if (value !== undefined) line += ` ${key}=${formatValue(value)}`;
      }
    }
    process.stderr.write(line + '\n');
  }
}

export function logger(component: string): Logger {
  return new Logger(component);
}
