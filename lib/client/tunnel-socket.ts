/**
 * A tunneled connection dressed as enough of a net.Socket for node:http. The http client and
 * http.Agent call setNoDelay, setKeepAlive, setTimeout, ref and unref on every socket, and rely
 * on 'timeout' events for request timeouts; a TunnelConnection is a plain Duplex and has none
 * of them. The protocol has no half-close, so when the peer ends, this socket ends too.
 */
import { Duplex } from 'node:stream';

/** The socket methods of net.Socket that the wrapped stream may or may not have. */
interface SocketMethods {
  setNoDelay?(noDelay?: boolean): unknown;
  setKeepAlive?(enable?: boolean, initialDelay?: number): unknown;
  ref?(): unknown;
  unref?(): unknown;
}

export class TunnelSocket extends Duplex {
  /** Read by http before writing: a tunnel is connected once it exists. */
  readonly connecting = false;
  /** Idle timeout in ms, 0 for none, as on net.Socket. */
  timeout = 0;

  private idleTimer?: NodeJS.Timeout;
  private referenced = true;

  constructor(private readonly inner: Duplex & SocketMethods) {
    super({
      allowHalfOpen: false,
      readableHighWaterMark: inner.readableHighWaterMark,
      writableHighWaterMark: inner.writableHighWaterMark,
    });
    inner.on('data', (chunk: Buffer) => {
      this.touch();
      if (!this.push(chunk)) inner.pause();
    });
    inner.once('end', () => this.push(null));
    inner.once('error', (err: Error) => this.destroy(err));
    inner.once('close', () => {
      if (!inner.readableEnded) this.destroy();
    });
  }

  setNoDelay(noDelay?: boolean): this {
    this.inner.setNoDelay?.(noDelay);
    return this;
  }

  setKeepAlive(enable?: boolean, initialDelay?: number): this {
    this.inner.setKeepAlive?.(enable, initialDelay);
    return this;
  }

  /** Emits 'timeout' after `ms` without data in either direction, like net.Socket. */
  setTimeout(ms: number, callback?: () => void): this {
    this.timeout = ms;
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (callback) {
      if (ms === 0) this.off('timeout', callback);
      else this.once('timeout', callback);
    }
    this.touch();
    return this;
  }

  ref(): this {
    this.referenced = true;
    this.idleTimer?.ref();
    this.inner.ref?.();
    return this;
  }

  unref(): this {
    this.referenced = false;
    this.idleTimer?.unref();
    this.inner.unref?.();
    return this;
  }

  override _read(): void {
    this.inner.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.touch();
    this.inner.write(chunk, callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (!this.inner.destroyed && !this.inner.writableEnded) this.inner.end();
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    this.inner.destroy();
    callback(err);
  }

  /** Restarts the idle timer on activity. */
  private touch(): void {
    if (this.timeout <= 0 || this.destroyed) return;
    if (this.idleTimer) {
      this.idleTimer.refresh();
      return;
    }
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      this.emit('timeout');
    }, this.timeout);
    if (!this.referenced) this.idleTimer.unref();
  }
}
