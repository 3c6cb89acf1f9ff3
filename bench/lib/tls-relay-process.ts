/**
 * A one-hop relay that terminates mutual TLS, as the tunnel's HTTP-CONNECT frontend does,
 * with the same certificates: the baseline that tells a handshake's own cost apart from the
 * tunnel's. Each authorised client is piped to --target-port on 127.0.0.1 and back.
 */
import tls from 'node:tls';
import { constants } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connectUpstream, flag, numberFlag, serve } from './helper-main.js';

const targetPort = numberFlag('target-port');

const server = tls.createServer({
  cert: readFileSync(flag('cert')),
  key: readFileSync(flag('key')),
  ca: readFileSync(flag('ca')),
  requestCert: true,
  rejectUnauthorized: true,
  // As the tunnel's HTTP-CONNECT frontend: no session tickets.
  secureOptions: constants.SSL_OP_NO_TICKET,
}, (client) => {
  const upstream = connectUpstream(client, targetPort);
  client.pipe(upstream);
  upstream.pipe(client);
});
server.on('tlsClientError', () => undefined);

await serve(server);
