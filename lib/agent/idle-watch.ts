/**
 * `--idle-timeout`: closes tunneled connections that moved no byte, either way, for that
 * long. Nothing happens per byte: one coarse interval timer (a quarter of the timeout, at
 * most 30 s, and only while connections are watched) compares each target socket's byte
 * counters (bytesRead + bytesWritten, kept by Node anyway) with the last look. A connection
 * is closed only after a whole timeout without a change, so one that moves bytes is never
 * closed; an idle one closes between the timeout and the timeout plus one interval.
 * Closing the target socket closes the tunneled connection, and so the client's, too.
 */
import type net from 'node:net';
import { interval, type Subscription } from 'rxjs';
import type { Logger } from '../observe/log.js';

interface Watched {
  address: string;
  moved: number;
  /** When the counters last changed (or the watch began). */
  since: number;
}

export class IdleWatch {
  private readonly sockets = new Map<net.Socket, Watched>();
  private ticks?: Subscription;
  private readonly periodMs: number;

  constructor(private readonly idleMs: number, private readonly log: Logger, private readonly onIdleClose?: () => void) {
    this.periodMs = Math.max(50, Math.min(30_000, Math.floor(idleMs / 4)));
  }

  get watched(): number {
    return this.sockets.size;
  }

  watch(socket: net.Socket, address: string): void {
    if (socket.destroyed) return;
    this.sockets.set(socket, { address, moved: socket.bytesRead + socket.bytesWritten, since: Date.now() });
    socket.once('close', () => {
      this.sockets.delete(socket);
      if (this.sockets.size === 0) this.stopTicking();
    });
    this.ticks ??= interval(this.periodMs).subscribe(() => this.look());
  }

  close(): void {
    this.stopTicking();
    this.sockets.clear();
  }

  private look(): void {
    const now = Date.now();
    for (const [socket, entry] of this.sockets) {
      const moved = socket.bytesRead + socket.bytesWritten;
      if (moved !== entry.moved) {
        entry.moved = moved;
        entry.since = now;
      } else if (now - entry.since >= this.idleMs) {
        this.sockets.delete(socket);
        this.log.info('closing an idle tunneled connection', { address: entry.address, idle: `${Math.round((now - entry.since) / 1000)}s`, idleTimeout: `${this.idleMs}ms` });
        this.onIdleClose?.();
        socket.destroy();
      }
    }
    if (this.sockets.size === 0) this.stopTicking();
  }

  private stopTicking(): void {
    this.ticks?.unsubscribe();
    this.ticks = undefined;
  }
}
