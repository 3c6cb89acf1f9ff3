/**
 * The bench target's tiny protocol. A client opens a connection and sends a 9-byte header:
 * one ASCII mode byte and a big-endian uint64 N. Modes:
 *
 *   D  download: the target sends N bytes, then waits for the client to close.
 *   U  upload: the target reads N bytes, then answers with a 1-byte ack.
 *   R  request/response: the target reads N bytes, then sends N bytes back.
 *   E  echo: the target echoes everything (N is ignored).
 *
 * The same header goes through every path (direct, relays, tunnel), so all paths carry the
 * same bytes.
 */
export type Mode = 'D' | 'U' | 'R' | 'E';

export const HEADER_BYTES = 9;
export const ACK = 0x06;

export function header(mode: Mode, n: number): Buffer {
  const buf = Buffer.alloc(HEADER_BYTES);
  buf.write(mode, 0, 'latin1');
  buf.writeBigUInt64BE(BigInt(n), 1);
  return buf;
}

export function parseHeader(buf: Buffer): { mode: Mode; n: number } {
  const mode = String.fromCharCode(buf[0]!) as Mode;
  if (!'DURE'.includes(mode)) throw new Error(`unknown mode ${JSON.stringify(mode)}`);
  const n = buf.readBigUInt64BE(1);
  return { mode, n: n > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(n) };
}
