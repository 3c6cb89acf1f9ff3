/**
 * The bench target's tiny protocol. A client opens a connection and sends a 17-byte header:
 * one ASCII mode byte, then big-endian uint64 N and OFFSET. The bytes moved are those of the
 * shared stream in content.ts. Modes:
 *
 *   D  download: the target sends N bytes of the stream from OFFSET, and closes right after
 *      its last write (so the close races the last bytes, as a server's does).
 *   U  upload: the target reads N bytes, then answers with their sha256 (32 bytes).
 *   R  request/response: the target reads N bytes, then sends the same N bytes back.
 *   E  echo: the target echoes everything (N and OFFSET are ignored).
 *
 * The same header goes through every path (direct, relays, tunnel), so all paths carry the
 * same bytes, and every receiver checks them (length and sha256).
 */
export type Mode = 'D' | 'U' | 'R' | 'E';

export const HEADER_BYTES = 17;
/** What the target answers an upload with: the sha256 of what it read. */
export const DIGEST_BYTES = 32;

export function header(mode: Mode, n: number, offset = 0): Buffer {
  const buf = Buffer.alloc(HEADER_BYTES);
  buf.write(mode, 0, 'latin1');
  buf.writeBigUInt64BE(BigInt(n), 1);
  buf.writeBigUInt64BE(BigInt(offset), 9);
  return buf;
}

export function parseHeader(buf: Buffer): { mode: Mode; n: number; offset: number } {
  const mode = String.fromCharCode(buf[0]) as Mode;
  if (!'DURE'.includes(mode)) throw new Error(`unknown mode ${JSON.stringify(mode)}`);
  const safe = (v: bigint) => (v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v));
  return { mode, n: safe(buf.readBigUInt64BE(1)), offset: safe(buf.readBigUInt64BE(9)) };
}
