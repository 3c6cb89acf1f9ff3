/**
 * The bytes every bench transfer moves, and how each connection's bytes are checked where
 * they arrive. Client and target both know the content: an endless stream that repeats a
 * pseudo-random pattern, of which a transfer takes `bytes` bytes from `offset` on.
 * Concurrent transfers start at different offsets, so bytes delivered to the wrong
 * connection show up as well as lost, repeated or changed ones. The receiver hashes what
 * it got (sha256) and compares length and digest with what was sent; the expected digest is
 * worked out before the clock starts, so only the receiver's own hashing is timed, on every
 * path alike.
 */
import { createCipheriv, createHash } from 'node:crypto';

/** Not a multiple of any read or packet size, so that the stream's pieces fall differently each period. */
const PATTERN_BYTES = 1024 * 1024 + 13;
/** AES-128-CTR of zeros under a fixed key: the same pseudo-random bytes in every process. */
const PATTERN = createCipheriv('aes-128-ctr', Buffer.alloc(16, 0x5a), Buffer.alloc(16)).update(Buffer.alloc(PATTERN_BYTES));
const SLICE_BYTES = 256 * 1024;

/** One transfer's bytes: where in the stream they start, how many, and their sha256. */
export interface Payload {
  offset: number;
  bytes: number;
  sha256: string;
}

/** The stream's bytes [offset, offset + bytes) as pieces of at most 256 KiB, without copies. */
export function* slices(offset: number, bytes: number): Generator<Buffer> {
  let at = offset % PATTERN_BYTES;
  let left = bytes;
  while (left > 0) {
    const n = Math.min(left, SLICE_BYTES, PATTERN_BYTES - at);
    yield PATTERN.subarray(at, at + n);
    left -= n;
    at = (at + n) % PATTERN_BYTES;
  }
}

/** The stream's bytes [offset, offset + bytes) in one buffer (small transfers only). */
export function bytesAt(offset: number, bytes: number): Buffer {
  return Buffer.concat([...slices(offset, bytes)], bytes);
}

const digests = new Map<string, string>();

/** A payload of `bytes` from `offset`; its digest is computed once per offset and size. */
export function payload(bytes: number, offset = 0): Payload {
  const key = `${offset % PATTERN_BYTES}:${bytes}`;
  let sha256 = digests.get(key);
  if (sha256 === undefined) {
    const hash = createHash('sha256');
    for (const piece of slices(offset, bytes)) hash.update(piece);
    sha256 = hash.digest('hex');
    digests.set(key, sha256);
  }
  return { offset, bytes, sha256 };
}

/** Distinct offsets for `count` concurrent transfers. */
export function offsets(count: number): number[] {
  return Array.from({ length: count }, (_, i) => (i * 65_537) % PATTERN_BYTES);
}

/** What arrived on one connection: its length and running sha256. */
export class Received {
  bytes = 0;
  private readonly hash = createHash('sha256');

  update(chunk: Buffer): void {
    this.bytes += chunk.length;
    this.hash.update(chunk);
  }

  digest(): string {
    return this.hash.digest('hex');
  }
}

/** Why `received` (its length, and its digest once complete) is not `expected`, or undefined. */
export function mismatch(what: string, received: { bytes: number; sha256: string }, expected: Payload): string | undefined {
  if (received.bytes !== expected.bytes) return `${what}: ${received.bytes} bytes arrived of ${expected.bytes}`;
  if (received.sha256 !== expected.sha256) return `${what}: all ${expected.bytes} bytes arrived but their sha256 differs (${received.sha256.slice(0, 12)}… for ${expected.sha256.slice(0, 12)}…)`;
  return undefined;
}
