/**
 * The client certificate for mTLS to the tunnel server: files given by the operator, or the
 * local PKI of the state directory (created on first use), so a client on the server's host
 * works without any certificate flags.
 */
import { ensureLocalPki } from '../pki/local-pki.js';
import { FileTlsSource, localPkiTlsSource, type TlsSource } from '../pki/tls-source.js';

const ROLE = 'tunnel-client';

export interface ClientTlsFiles {
  ca: string;
  cert: string;
  key: string;
}

export async function loadClientTls(files: ClientTlsFiles | undefined, stateDir: string): Promise<TlsSource> {
  if (files) return FileTlsSource.load({ ...files, role: ROLE });
  return localPkiTlsSource(await ensureLocalPki({ stateDir }), 'client');
}
