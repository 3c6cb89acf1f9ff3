/**
 * TLS for gRPC listeners and channels, built from a TlsSource (local PKI, files, and later
 * certificates from the Kubernetes CSR API).
 */
import * as grpc from '@grpc/grpc-js';
import type { TlsSource } from '../pki/tls-source.js';
import { DEFAULT_HTTP2_WINDOW, raiseServerConnectionWindows } from './http2-windows.js';

/** Server credentials that require and verify a client certificate (mTLS). */
export function mtlsServerCredentials(tls: TlsSource): grpc.ServerCredentials {
  const { ca, cert, key } = tls.current();
  return grpc.ServerCredentials.createSsl(ca, [{ private_key: key, cert_chain: cert }], true);
}

export function mtlsChannelCredentials(tls: TlsSource): grpc.ChannelCredentials {
  const { ca, cert, key } = tls.current();
  return grpc.credentials.createSsl(ca, key, cert);
}

/**
 * Binds a grpc.Server and gives back the port it got (useful with port 0). Sessions
 * accepted on it get the raised HTTP/2 connection window (see http2-windows.ts).
 */
export function bindServer(server: grpc.Server, address: string, credentials: grpc.ServerCredentials, http2Window = DEFAULT_HTTP2_WINDOW): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (err, port) => {
      if (err) {
        reject(new Error(`cannot listen on ${address}: ${err.message}`));
        return;
      }
      raiseServerConnectionWindows(server, http2Window);
      resolve(port);
    });
  });
}
