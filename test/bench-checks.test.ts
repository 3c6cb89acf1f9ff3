/**
 * The bench's own checks: every transfer it times is verified where it arrives, and a
 * transfer that lost, changed or added a byte is an integrity failure, not a figure.
 */
import test from 'ava';
import net from 'node:net';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import { download, upload, requestResponse } from '../bench/lib/measure.js';
import { payload, slices } from '../bench/lib/content.js';
import { HEADER_BYTES, parseHeader } from '../bench/lib/protocol.js';
import { IntegrityError, integrityFailures } from '../bench/lib/integrity.js';
import { makeFigure, renderTable } from '../bench/lib/results.js';

/** A target that answers the bench protocol, with `spoil` applied to what it sends or reports. */
async function target(spoil: (mode: string, data: Buffer) => Buffer): Promise<{ port: number; close(): void }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let head = Buffer.alloc(0);
    const onHead = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      if (head.length < HEADER_BYTES) return;
      socket.off('data', onHead);
      const { mode, n, offset } = parseHeader(head);
      let got = head.subarray(HEADER_BYTES);
      if (mode === 'D') {
        socket.end(spoil(mode, Buffer.concat([...slices(offset, n)])));
        return;
      }
      const onBody = (d: Buffer) => {
        got = Buffer.concat([got, d]);
        if (got.length < n) return;
        socket.off('data', onBody);
        const answer = mode === 'U' ? createHash('sha256').update(got.subarray(0, n)).digest() : got.subarray(0, n);
        socket.write(spoil(mode, answer));
      };
      socket.on('data', onBody);
      if (got.length > 0) onBody(Buffer.alloc(0));
    };
    socket.on('data', onHead);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as net.AddressInfo).port, close: () => { for (const s of sockets) s.destroy(); server.close(); } };
}

async function dial(port: number): Promise<net.Socket> {
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  return socket;
}

const flip = (data: Buffer) => {
  const copy = Buffer.from(data);
  copy[copy.length >> 1] ^= 1;
  return copy;
};

test('a whole download, upload and request/response pass their checks', async (t) => {
  const honest = await target((_mode, data) => data);
  try {
    const conns = await Promise.all([dial(honest.port), dial(honest.port), dial(honest.port)]);
    const d = await download(conns[0], payload(3 * 1024 * 1024 + 5, 777), 10_000);
    t.true(d.complete);
    t.is(d.bytes, 3 * 1024 * 1024 + 5);
    t.true((await upload(conns[1], payload(2 * 1024 * 1024, 99), 10_000)).complete);
    await t.notThrowsAsync(requestResponse(conns[2], 1024, 10_000, 4242));
    for (const c of conns) c.destroy();
  } finally {
    honest.close();
  }
});

for (const [what, spoil, mode] of [
  ['a download that ends one byte short', (data: Buffer) => data.subarray(0, data.length - 1), 'D'],
  ['a download with one byte changed', flip, 'D'],
  ['a download with a byte too many before the close', (data: Buffer) => Buffer.concat([data, Buffer.from([0])]), 'D'],
  ['an upload that reached the target changed', flip, 'U'],
  ['a response with one byte changed', flip, 'R'],
] as const) {
  test.serial(`${what} is an integrity failure, kept for the run`, async (t) => {
    const bad = await target((m, data) => (m === mode ? spoil(data) : data));
    const before = integrityFailures().length;
    try {
      const conn = await dial(bad.port);
      const run = mode === 'D' ? download(conn, payload(1024 * 1024 + 3, 5), 10_000)
        : mode === 'U' ? upload(conn, payload(1024 * 1024 + 3, 5), 10_000)
          : requestResponse(conn, 1024, 10_000, 5);
      await t.throwsAsync(run, { instanceOf: IntegrityError });
      t.is(integrityFailures().length, before + 1, 'the run remembers it');
      conn.destroy();
    } finally {
      bad.close();
    }
  });
}

test('the table of a void run meets no target', (t) => {
  const fig = makeFigure('bulk', { figure: 'download', value: 300, unit: 'MB/s', baseline: { label: 'relay', value: 600 }, target: { on: 'ratio', op: '>=', limit: 0.3 } });
  t.true(fig.ok);
  const table = renderTable([{ ...fig, ok: false, void: true }]);
  t.regex(table, /VOID/);
  t.regex(table, /targets met: 0 of 1/);
});
