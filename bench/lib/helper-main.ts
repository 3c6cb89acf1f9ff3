/**
 * What the bench's helper child processes (target, relay, delay relay) share: flag parsing,
 * telling the parent their port over the IPC channel, and exiting when the parent goes away
 * (the IPC channel closes when the bench dies, even on SIGKILL).
 */
import net from 'node:net';
import { once } from 'node:events';

export function flag(name: string, fallback?: string): string {
  const prefix = `--${name}=`;
  const arg = process.argv.slice(2).find((a) => a.startsWith(prefix));
  if (arg !== undefined) return arg.slice(prefix.length);
  if (fallback !== undefined) return fallback;
  throw new Error(`missing --${name}=`);
}

export function numberFlag(name: string, fallback?: number): number {
  const value = Number(flag(name, fallback === undefined ? undefined : String(fallback)));
  if (!Number.isFinite(value)) throw new Error(`--${name} must be a number`);
  return value;
}

/** Listens on 127.0.0.1:0 and reports the port to the parent. */
export async function serve(server: net.Server): Promise<void> {
  process.on('disconnect', () => process.exit(0));
  server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 });
  await once(server, 'listening');
  const address = server.address() as net.AddressInfo;
  process.send?.({ port: address.port });
}

/**
 * A relay server: each accepted client gets a connection to 127.0.0.1:targetPort, and the two
 * are torn down together; `join` moves the bytes between them.
 */
export function relayServer(targetPort: number, join: (client: net.Socket, upstream: net.Socket) => void, allowHalfOpen = false): net.Server {
  return net.createServer({ allowHalfOpen }, (client) => {
    const upstream = connectUpstream(client, targetPort, allowHalfOpen);
    join(client, upstream);
  });
}

/**
 * Connects to 127.0.0.1:targetPort for an accepted client, both without Nagle. When one side
 * fails, both are torn down; when one closes, the other still gets what was on its way to
 * it: the relay's join ends it once flushed (pipe() does; a half-open join ends it when the
 * end arrives), and a side that closed without ending ends the other here.
 */
export function connectUpstream(client: net.Socket, targetPort: number, allowHalfOpen = false): net.Socket {
  const upstream = net.connect({ host: '127.0.0.1', port: targetPort, allowHalfOpen });
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  const teardown = () => {
    client.destroy();
    upstream.destroy();
  };
  for (const [side, other] of [[client, upstream], [upstream, client]] as const) {
    side.on('error', teardown);
    side.on('close', () => {
      if (!side.readableEnded) other.end();
    });
  }
  return upstream;
}
