/**
 * Joins a tunneled connection and a socket (or two tunneled connections) both ways.
 *
 * The protocol has no half-close: when either side's input ends, the connection is over,
 * but not before what that side sent has been delivered. So the join ends when one side's
 * input has ended and everything it sent has been written out on the other side: when
 * the target closes after its last write, the tunneled connection sends the last DATA and
 * only then its close; when the peer closes, the socket is flushed and only then ended.
 * Whatever arrives the other way after an input ended is discarded, because the end it
 * was meant for has closed.
 *
 * Plain pipe() carries the data and its backpressure; a handful of listeners do the rest,
 * which keeps an idle connection small (two stream.pipeline() calls cost about twice the
 * listeners and closures, and there can be tens of thousands of these). A closing side
 * may take as long as it needs to flush, as long as it makes progress (CLOSE_LINGER_MS).
 */
import { setDefaultHighWaterMark, type Duplex } from 'node:stream';
import { CLOSE_LINGER_MS, TunnelConnection } from './tunnel-connection.js';

/** What one socket read brings (libuv reads up to 64 KiB). */
export const SOCKET_HIGH_WATER_MARK = 64 * 1024;

/**
 * Makes the sockets created from now on take a whole read's worth before they call
 * themselves full. At Node's default of 16 KiB a socket fed by a tunneled connection is
 * "full" after one TLS record: pipe() pauses, and every turn of the loop writes about 16 KiB
 * to it. With 64 KiB the server's writes to HTTP-CONNECT clients carry what the turn
 * brought (bench/scenarios/bulk.ts measures it). It is a process-wide default because Node
 * takes no such option for the TLS sockets a server accepts, so the binaries set it when
 * they start.
 */
export function raiseSocketHighWaterMark(): void {
  setDefaultHighWaterMark(false, SOCKET_HIGH_WATER_MARK);
}

/** Errors that are the ordinary way a TCP peer goes away. */
const ORDINARY_CLOSE_CODES = new Set(['ERR_STREAM_PREMATURE_CLOSE', 'ECONNRESET', 'EPIPE', 'ERR_STREAM_DESTROYED']);

export function isOrdinaryClose(err: unknown): boolean {
  return !err || ORDINARY_CLOSE_CODES.has((err as NodeJS.ErrnoException).code ?? '');
}

function prematureClose(what: string): Error {
  const err = new Error(`${what} closed before its data was delivered`) as NodeJS.ErrnoException;
  err.code = 'ERR_STREAM_PREMATURE_CLOSE';
  return err;
}

/**
 * Pipes the tunneled connection `a` into `b` and `b` into `a`, and calls `done` once when
 * the connection is over: cleanly (as above), or because `a` failed or closed early (its
 * packet stream went away, the peer broke the protocol, or its linger ran out), in which
 * case `b` is destroyed at once. A side `b` that fails or closes early counts as its input
 * ending: what it delivered before still goes out through `a`, then `a` closes.
 */
export function splice(a: Duplex, b: Duplex, done?: (err?: Error) => void): void {
  let finished = false;
  /** Why `b` failed, if it did: reported to `done` once `a` has flushed. */
  let bError: Error | undefined;
  /** A side's input is over ('end', or for `b` also an error or early close). */
  let aInputEnded = false;
  let bInputEnded = false;
  let aFlushed = false;
  let bFlushed = false;
  let flushWatch: NodeJS.Timeout | undefined;

  const finish = (err?: Error | null) => {
    if (finished) return;
    finished = true;
    clearTimeout(flushWatch);
    a.destroy();
    b.destroy();
    done?.(err ?? undefined);
  };
  const settle = () => {
    if ((aInputEnded && bFlushed) || (bInputEnded && aFlushed)) finish(bError);
  };
  /**
   * `closed`'s input ended: what `other` still yields was meant for an end that is gone. A
   * tunneled connection goes on being read, and what it yields is dropped, so that it holds
   * no window and no shared stream; a socket is simply no longer read.
   */
  const stopFeeding = (other: Duplex, closed: Duplex) => {
    other.unpipe(closed);
    if (other instanceof TunnelConnection) other.resume();
  };

  a.once('end', () => {
    aInputEnded = true;
    stopFeeding(b, a); // pipe() ends `b` once it has written what `a` yielded
    settle();
    if (!finished) flushWatch = watchFlush(b, finish);
  });
  const endOfB = () => {
    if (bInputEnded) return;
    bInputEnded = true;
    stopFeeding(a, b);
    if (!a.writableEnded) a.end();
    settle();
  };
  b.once('end', () => endOfB());
  a.once('finish', () => {
    aFlushed = true;
    settle();
  });
  b.once('finish', () => {
    bFlushed = true;
    settle();
  });
  b.on('error', (err) => {
    bError ??= err;
    endOfB();
  });
  b.once('close', endOfB);
  a.on('error', (err) => finish(err));
  a.once('close', () => {
    // Once its input ended, `a` has nothing more to do (its peer has closed, or it closed
    // itself after flushing) and may close while `b` flushes. Before, a close is early: its
    // stream went away, or its linger ran out.
    if (!aInputEnded) finish(prematureClose('the tunneled connection'));
  });

  corkPerTurn(a, b);
  // From another tunneled connection too, which yields pieces like `a`. Not from a socket:
  // its reads are large already (up to 64 KiB), and holding them for a turn measured slower,
  // as the socket stops reading until the batch has gone out.
  if (b instanceof TunnelConnection) corkPerTurn(b, a);
  a.pipe(b);
  b.pipe(a);
}

/**
 * Bounds how long `to` may take to flush once it was ended: when what it holds has not
 * shrunk for CLOSE_LINGER_MS (its reader stopped reading), `fail` is called. One timer per
 * closing connection, looked at once per linger period; the caller clears it when done.
 */
function watchFlush(to: Duplex, fail: (err: Error) => void): NodeJS.Timeout {
  let held = to.writableLength;
  const timer = setTimeout(() => {
    if (to.writableLength !== held) {
      held = to.writableLength;
      timer.refresh();
      return;
    }
    fail(new Error(`closing made no progress for ${CLOSE_LINGER_MS / 1000} s: ${held} bytes could not be delivered, the reader stopped reading`));
  }, CLOSE_LINGER_MS);
  return timer.unref();
}

/**
 * Whatever the tunneled connection `from` yields within one turn of the event loop goes to
 * `to` in one write. It yields a DATA payload in pieces (HTTP/2 frames split across TLS
 * records and socket reads): a socket would otherwise make a system call (and a TLS write)
 * for each, and a tunneled connection a DATA packet for each, which every later hop pays for
 * again. The cork comes off when the loop has handled the I/O it polled. Registered before
 * pipe(), so the cork is on before pipe's first write.
 */
function corkPerTurn(from: Duplex, to: Duplex): void {
  let corked = false;
  const uncork = () => {
    corked = false;
    to.uncork();
  };
  from.on('data', () => {
    if (corked || to.writableEnded) return;
    corked = true;
    to.cork();
    setImmediate(uncork);
  });
}
