/**
 * A plain one-hop TCP relay (the baseline a tunnel hop is compared with): each accepted
 * connection is piped to --target-port on 127.0.0.1 and back.
 */
import net from 'node:net';
import { numberFlag, serve } from './helper-main.js';

const targetPort = numberFlag('target-port');

await serve(net.createServer((client) => {
  const upstream = net.connect({ host: '127.0.0.1', port: targetPort });
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  const teardown = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', teardown).on('close', teardown);
  upstream.on('error', teardown).on('close', teardown);
  client.pipe(upstream);
  upstream.pipe(client);
}));
