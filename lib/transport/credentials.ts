/**
 * TLS for the gRPC client (lib/client's ProxyService dialer), built from a TlsSource.
 * Our listeners and the agent take the TlsSource itself (grpc-server.ts, grpc-client.ts).
 */
import * as grpc from '@grpc/grpc-js';
import type { TlsSource } from '../pki/tls-source.js';

export function mtlsChannelCredentials(tls: TlsSource): grpc.ChannelCredentials {
  const { ca, cert, key } = tls.current();
  return grpc.credentials.createSsl(ca, key, cert);
}
