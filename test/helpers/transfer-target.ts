/**
 * A target that moves known bytes and closes the moment it is done, so that every close
 * races the data before it. A connection starts with one line:
 *
 *   get <bytes> <offset>   the target writes that slice of SOURCE and closes right after
 *                          its last write;
 *   put <id>               the target reads until the client ends, then records what it
 *                          got (length and sha256) under `id` and closes;
 *   echo <bytes>           the target echoes that many bytes and closes right after the
 *                          last one;
 *   cycle <bytes>          the target sends SOURCE over and over, that many bytes in all,
 *                          at the pace the socket allows, and closes (see cyclicDigest).
 */
import net from 'node:net';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';

/** What a download slices from: random, so a misplaced byte shows in the digest. */
export const SOURCE = randomBytes(16 * 1024 * 1024);

export interface Received {
  bytes: number;
  sha256: string;
}

export interface TransferTarget {
  port: number;
  /** What each `put` received, once its client ended. */
  readonly uploads: ReadonlyMap<string, Received>;
  /** Sockets open on the target. */
  readonly open: number;
  close(): Promise<void>;
}

export function digest(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function serve(socket: net.Socket, uploads: Map<string, Received>): void {
  socket.on('error', () => socket.destroy());
  let head = Buffer.alloc(0);
  const onHead = (chunk: Buffer) => {
    head = Buffer.concat([head, chunk]);
    const eol = head.indexOf(0x0a);
    if (eol < 0) return;
    socket.off('data', onHead);
    const [verb, arg1, arg2] = head.subarray(0, eol).toString('latin1').split(' ');
    const rest = head.subarray(eol + 1);
    if (verb === 'get') {
      const offset = Number(arg2);
      socket.end(SOURCE.subarray(offset, offset + Number(arg1)));
      socket.resume();
    } else if (verb === 'put') {
      const hash = createHash('sha256').update(rest);
      let bytes = rest.length;
      socket.on('data', (d: Buffer) => { hash.update(d); bytes += d.length; });
      socket.once('end', () => {
        uploads.set(arg1, { bytes, sha256: hash.digest('hex') });
        socket.end();
      });
    } else if (verb === 'cycle') {
      let left = Number(arg1);
      const pump = () => {
        while (left > 0) {
          const piece = left >= SOURCE.length ? SOURCE : SOURCE.subarray(0, left);
          left -= piece.length;
          if (!socket.write(piece)) {
            socket.once('drain', pump);
            return;
          }
        }
        socket.end();
      };
      socket.resume();
      pump();
    } else if (verb === 'echo') {
      let left = Number(arg1);
      const echo = (d: Buffer) => {
        const piece = d.subarray(0, left);
        left -= piece.length;
        if (left > 0) {
          if (!socket.write(piece)) {
            socket.pause();
            socket.once('drain', () => socket.resume());
          }
        } else {
          socket.off('data', echo);
          socket.end(piece);
        }
      };
      socket.on('data', echo);
      if (rest.length > 0) echo(rest);
    } else {
      socket.destroy();
    }
  };
  socket.on('data', onHead);
}

export async function transferTarget(): Promise<TransferTarget> {
  const uploads = new Map<string, Received>();
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    serve(socket, uploads);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    uploads,
    get open() { return sockets.size; },
    close: () => new Promise((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }),
  };
}

/** How a client treats a transfer: `slow` readers pause now and then, so windows fill up. */
export interface TransferPlan {
  kind: 'get' | 'put' | 'echo';
  bytes: number;
  slow: boolean;
  id: string;
}

export interface TransferResult {
  plan: TransferPlan;
  /** What came back to the client (get, echo), or what the target recorded (put). */
  received?: Received;
  expected: Received;
  error?: string;
}

/** A mix of every kind, with random sizes up to `maxBytes`, some of them slow readers. */
export function transferPlans(count: number, maxBytes: number, prefix: string): TransferPlan[] {
  const kinds = ['get', 'put', 'echo'] as const;
  return Array.from({ length: count }, (_, i) => ({
    kind: kinds[i % kinds.length],
    bytes: 1 + Math.floor(Math.random() * maxBytes),
    slow: i % 4 === 1,
    id: `${prefix}-${i}`,
  }));
}

/** Reads everything until the socket ends; a slow reader stops for a moment every 128 KiB. */
function readAll(socket: NodeJS.ReadableStream & { destroyed?: boolean }, slow: boolean): Promise<Received> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    let sinceStop = 0;
    socket.on('data', (d: Buffer) => {
      hash.update(d);
      bytes += d.length;
      sinceStop += d.length;
      if (slow && sinceStop >= 128 * 1024) {
        sinceStop = 0;
        socket.pause();
        setTimeout(() => socket.resume(), 5);
      }
    });
    socket.once('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
    socket.once('error', reject);
    socket.once('close', () => reject(new Error(`closed without an end after ${bytes} bytes`)));
  });
}

/** Writes `data` at the pace the socket allows. */
async function writeAll(socket: NodeJS.WritableStream, data: Buffer): Promise<void> {
  const step = 64 * 1024;
  for (let offset = 0; offset < data.length; offset += step) {
    if (!socket.write(data.subarray(offset, offset + step))) await once(socket, 'drain');
  }
}

/**
 * Runs one transfer over `socket` (already tunneled to the target) and says what arrived.
 * A `put` half-closes after its last byte and then waits for the tunnel to close; the
 * target's record of it is read by `settleUploads`.
 */
export async function runTransfer(socket: net.Socket | (NodeJS.ReadWriteStream & { end(): unknown; destroy(): unknown }), plan: TransferPlan): Promise<TransferResult> {
  const offset = Math.floor(Math.random() * (SOURCE.length - plan.bytes));
  const payload = SOURCE.subarray(offset, offset + plan.bytes);
  const expected = { bytes: plan.bytes, sha256: digest(payload) };
  const result: TransferResult = { plan, expected };
  try {
    if (plan.kind === 'get') {
      socket.write(`get ${plan.bytes} ${offset}\n`);
      result.received = await readAll(socket, plan.slow);
    } else if (plan.kind === 'echo') {
      socket.write(`echo ${plan.bytes}\n`);
      const reading = readAll(socket, plan.slow);
      await writeAll(socket, payload);
      result.received = await reading;
    } else {
      socket.write(`put ${plan.id}\n`);
      const closed = new Promise((resolve) => { socket.once('close', resolve); socket.once('end', resolve); socket.once('error', resolve); });
      socket.on('data', () => undefined);
      await writeAll(socket, payload);
      socket.end();
      await closed;
    }
  } catch (err) {
    result.error = (err as Error).message;
  } finally {
    socket.destroy();
  }
  return result;
}

/** Fills in what the target recorded for each `put`, waiting a little for the last ones. */
export async function settleUploads(target: TransferTarget, results: TransferResult[], timeoutMs = 10_000): Promise<void> {
  const puts = results.filter((r) => r.plan.kind === 'put');
  const deadline = Date.now() + timeoutMs;
  while (puts.some((r) => !target.uploads.has(r.plan.id)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  for (const r of puts) r.received = target.uploads.get(r.plan.id);
}

/** The transfers whose bytes did not arrive whole, in words. */
export function damaged(results: TransferResult[]): string[] {
  return results
    .filter((r) => r.error || r.received?.bytes !== r.expected.bytes || r.received.sha256 !== r.expected.sha256)
    .map((r) => `${r.plan.id} ${r.plan.kind}${r.plan.slow ? ' (slow reader)' : ''}: ${r.received?.bytes ?? 'nothing'} of ${r.expected.bytes} bytes`
      + `${r.received && r.received.bytes === r.expected.bytes ? ', digest differs' : ''}${r.error ? `, ${r.error}` : ''}`);
}

/** The sha256 of `bytes` bytes of SOURCE repeated: what a `cycle` transfer sends. */
export function cyclicDigest(bytes: number): string {
  const hash = createHash('sha256');
  for (let left = bytes; left > 0; left -= SOURCE.length) hash.update(left >= SOURCE.length ? SOURCE : SOURCE.subarray(0, left));
  return hash.digest('hex');
}
