/**
 * Timestamps as the API server writes them. metav1.Time serializes as RFC 3339 in UTC with
 * whole seconds (client-node sends milliseconds, which the server accepts and truncates), and
 * metav1.MicroTime (Lease acquireTime/renewTime) with six fractional digits.
 */

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const MICROS_PER_MILLI = 1000;

/** Whole-second UTC time, e.g. 2024-05-01T10:00:00Z. */
export function formatTime(date: Date): string {
  return `${date.toISOString().slice(0, 19)}Z`;
}

/** Microsecond UTC time, e.g. 2024-05-01T10:00:00.123000Z (JavaScript dates hold milliseconds). */
export function formatMicroTime(date: Date): string {
  const iso = date.toISOString();
  const millis = Number(iso.slice(20, 23));
  return `${iso.slice(0, 19)}.${String(millis * MICROS_PER_MILLI).padStart(6, '0')}Z`;
}

/** Parses RFC 3339 (with or without fractions); undefined when the text is not a time. */
export function parseTime(text: string): Date | undefined {
  if (!RFC3339.test(text)) return undefined;
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? undefined : date;
}

/** duration.HumanDuration: how kubectl and the server's table printers show an age ("45s", "5m30s", "3h", "12d"). */
export function humanAge(since: Date, now: Date = new Date()): string {
  const seconds = Math.floor((now.getTime() - since.getTime()) / 1000);
  if (seconds < -1) return '<invalid>';
  if (seconds < 0) return '0s';
  if (seconds < 120) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 10) return seconds % 60 === 0 ? `${minutes}m` : `${minutes}m${seconds % 60}s`;
  if (minutes < 180) return `${minutes}m`;
  const hours = Math.floor(minutes / 60);
  if (hours < 8) return minutes % 60 === 0 ? `${hours}h` : `${hours}h${minutes % 60}m`;
  if (hours < 48) return `${hours}h`;
  if (hours < 24 * 8) return hours % 24 === 0 ? `${Math.floor(hours / 24)}d` : `${Math.floor(hours / 24)}d${hours % 24}h`;
  if (hours < 24 * 365 * 2) return `${Math.floor(hours / 24)}d`;
  if (hours < 24 * 365 * 8) {
    const days = Math.floor(hours / 24) % 365;
    return days === 0 ? `${Math.floor(hours / 24 / 365)}y` : `${Math.floor(hours / 24 / 365)}y${days}d`;
  }
  return `${Math.floor(hours / 24 / 365)}y`;
}
