/**
 * TLS for gRPC listeners and channels, built from a TlsSource (local PKI, files, and later
 * certificates from the Kubernetes CSR API).
 */
import * as grpc from '@grpc/grpc-js';
import type { TlsSource } from '../pki/tls-source.js';
import { raiseServerConnectionWindows } from './http2-windows.js';

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
 * Binds a grpc.Server and gives back the port it got (useful with port 0). With
 * `receiveWindow`, sessions accepted on it get that HTTP/2 connection window.
 */
export function bindServer(server: grpc.Server, address: string, credentials: grpc.ServerCredentials, receiveWindow?: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (err, port) => {
      if (err) {
        reject(new Error(`cannot listen on ${address}: ${err.message}`));
        return;
      }
      if (receiveWindow !== undefined) raiseServerConnectionWindows(server, receiveWindow);
      resolve(port);
    });
  });
}
