import { randomBytes } from 'node:crypto';

/** A uniform 63-bit dial id, like Go's rand.Int63() in the reference. */
export function randomDialId(): bigint {
  return randomBytes(8).readBigUInt64BE() >> 1n;
}
