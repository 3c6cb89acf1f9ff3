/**
 * Joins a tunneled connection and a socket (or two tunneled connections) both ways. The
 * protocol has no half-close: when either side ends, the other is flushed and both are torn
 * down. Built on stream.pipeline, so backpressure and errors propagate without bookkeeping.
 */
import { pipeline, type Duplex } from 'node:stream';

/** Errors that are the ordinary way a TCP peer goes away. */
const ORDINARY_CLOSE_CODES = new Set(['ERR_STREAM_PREMATURE_CLOSE', 'ECONNRESET', 'EPIPE', 'ERR_STREAM_DESTROYED']);

export function isOrdinaryClose(err: unknown): boolean {
  return !err || ORDINARY_CLOSE_CODES.has((err as NodeJS.ErrnoException).code ?? '');
}

/**
 * Pipes `a` into `b` and `b` into `a`. When `b` has been fed everything `a` had (a's
 * readable ended), or either direction fails, both are destroyed and `done` is called once.
 */
export function splice(a: Duplex, b: Duplex, done?: (err?: Error) => void): void {
  let finished = false;
  const finish = (err?: Error | null) => {
    if (finished) return;
    finished = true;
    a.destroy();
    b.destroy();
    done?.(err ?? undefined);
  };
  pipeline(b, a, (err) => {
    if (err) finish(err);
  });
  pipeline(a, b, (err) => finish(err));
}
