/**
 * Checks the JSON decoder makes when the server reads a request body into a built-in Go type:
 * []byte fields must be base64, times must be RFC 3339 (stored at the type's precision). The
 * server answers a failure with 400 "<Kind> in version "v1" cannot be handled as a <Kind>: ...".
 */
import { isObject, valueAt, type JsonObject } from './json.js';
import { base64ErrorText, decodeBase64 } from './base64.js';
import { badRequest, type ApiError } from './status.js';
import { formatMicroTime, formatTime, parseTime } from './time.js';

export function decodeError(kind: string, version: string, detail: string): ApiError {
  return badRequest(`${kind} in version "${version}" cannot be handled as a ${kind}: ${detail}`);
}

/** Every value of a string map (data) must be base64. */
export function requireBase64Values(object: JsonObject, field: string, kind: string, version: string): void {
  const map = object[field];
  if (map === undefined || map === null) return;
  if (!isObject(map)) throw decodeError(kind, version, `json: cannot unmarshal ${typeof map} into Go struct field ${kind}.${field} of type map[string][]uint8`);
  for (const value of Object.values(map)) requireBase64(value, kind, version);
}

export function requireBase64(value: unknown, kind: string, version: string): void {
  if (value === undefined || value === null) return;
  if (typeof value !== 'string') throw decodeError(kind, version, `json: cannot unmarshal ${typeof value} into Go value of type []uint8`);
  const decoded = decodeBase64(value);
  if (!Buffer.isBuffer(decoded)) throw decodeError(kind, version, base64ErrorText(decoded.badByte));
}

/** Parses a metav1.Time (or MicroTime) at a path and stores it at the server's precision. */
export function normalizeTime(object: JsonObject, path: string, kind: string, version: string, micro = false): void {
  const parts = path.split('.');
  const last = parts.pop() as string;
  const parent = parts.length === 0 ? object : valueAt(object, parts.join('.'));
  if (!isObject(parent)) return;
  const value = parent[last];
  if (value === undefined || value === null) return;
  const date = typeof value === 'string' ? parseTime(value) : undefined;
  if (!date) throw decodeError(kind, version, `parsing time ${JSON.stringify(value)} as "2006-01-02T15:04:05Z07:00": cannot parse ${JSON.stringify(value)} as "2006"`);
  parent[last] = micro ? formatMicroTime(date) : formatTime(date);
}
