/**
 * Flags the server and the agent share, with the same names, help and parsing.
 */
import { DEFAULT_CONNECTION_WINDOW } from '../transport/flow-control-metadata.js';
import { defaultStateDir } from '../pki/local-pki.js';
import { LOG_FORMATS, setLogFormat, setLogLevel, type LogFormat, type LogLevel } from '../observe/log.js';
import { UsageError } from '../common/errors.js';

const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;

/** --state-dir, --health-bind-address, --health-port, --connection-window, --single-stream, --log-level, --log-format, --v. */
export function commonFlags(healthPort: number, singleStreamHelp: string) {
  return {
    'state-dir': { type: 'string', default: defaultStateDir(), metavar: 'DIR', help: 'where the local PKI lives when no certificate flags are given' },
    'health-bind-address': { type: 'string', default: '127.0.0.1', metavar: 'IP', help: 'address of the health port (/metrics included): loopback unless given; 0.0.0.0 for kubelet probes and scrapers in a pod' },
    'health-port': { type: 'string', default: String(healthPort), metavar: 'PORT', help: '/healthz, /readyz and /metrics ("off" turns it off)' },
    'connection-window': { type: 'string', default: String(DEFAULT_CONNECTION_WINDOW), metavar: 'BYTES', help: 'most bytes one tunneled connection may hold for a reader that does not keep up; a connection starts at a quarter of it and grows while its reader keeps up; on a long link, about its bandwidth-delay product, on both ends (0 turns the flow-control extension off)' },
    'single-stream': { type: 'boolean', help: singleStreamHelp },
    'log-level': { type: 'string', default: 'info', metavar: 'LEVEL', help: LOG_LEVELS.join(', ') },
    ...logFormatFlag(),
    v: { type: 'string', metavar: 'N', help: 'klog verbosity, as konnectivity\'s and yurt-tunnel\'s manifests pass it: 0 to 3 log at info, 4 and more at debug (overrides --log-level)' },
    'process-tuning': { type: 'boolean', default: true, help: 'set this process\'s runtime as measured best for the tunnel: sockets take 64 KiB before they report full, and V8\'s heap grows up to 4x its live size between full collections (unless NODE_OPTIONS sets --heap-growing-percent)' },
    'reclaim-memory': { type: 'boolean', default: true, help: 'once most connections have closed, collect the heap and return the C allocator\'s free pages to the system (malloc_trim, where the optional koffi package loads)' },
  } as const;
}

/** --log-format, for every binary that logs. */
export function logFormatFlag() {
  return {
    'log-format': { type: 'string', default: 'text', metavar: 'FORMAT', help: 'text (one klog-like line per event, fields as key=value) or json (one JSON object per line: time, level, component, msg and the fields)' },
  } as const;
}

/** Sets the log format from --log-format. */
export function applyLogFormat(value: string): void {
  if (!(LOG_FORMATS as readonly string[]).includes(value)) throw new UsageError(`--log-format=${value} is not a log format: give one of ${LOG_FORMATS.join(', ')}`);
  setLogFormat(value as LogFormat);
}

/** Sets the log level from --log-level, or from klog's --v=N when given. */
export function applyLogLevel(value: string, verbosity?: string): void {
  if (verbosity !== undefined) {
    if (!/^\d+$/.test(verbosity)) throw new UsageError(`--v=${verbosity} is not a verbosity: give a whole number (0 to 3 log at info, 4 and more at debug)`);
    setLogLevel(Number(verbosity) >= 4 ? 'debug' : 'info');
    return;
  }
  if (!(LOG_LEVELS as readonly string[]).includes(value)) throw new UsageError(`--log-level=${value} is not a level: give one of ${LOG_LEVELS.join(', ')}`);
  setLogLevel(value as LogLevel);
}
