/**
 * A plain one-hop TCP relay (the baseline a tunnel hop is compared with): each accepted
 * connection is piped to --target-port on 127.0.0.1 and back.
 */
import { numberFlag, relayServer, serve } from './helper-main.js';

const targetPort = numberFlag('target-port');

await serve(relayServer(targetPort, (client, upstream) => {
  client.pipe(upstream);
  upstream.pipe(client);
}));
