/**
 * A one-hop relay that terminates mutual TLS, as the tunnel's HTTP-CONNECT frontend does,
 * with the same certificates: the baseline that tells a handshake's own cost apart from the
 * tunnel's. Each authorised client is piped to --target-port on 127.0.0.1 and back.
 */
import net from 'node:net';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { flag, numberFlag, serve } from './helper-main.js';

const targetPort = numberFlag('target-port');

const server = tls.createServer({
  cert: readFileSync(flag('cert')),
  key: readFileSync(flag('key')),
  ca: readFileSync(flag('ca')),
  requestCert: true,
  rejectUnauthorized: true,
}, (client) => {
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
});
server.on('tlsClientError', () => undefined);

await serve(server);
