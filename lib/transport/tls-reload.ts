/**
 * Keeps a TLS listener's certificate, key and trusted CAs those of its TlsSource: when the
 * source changes (a renewed certificate, a new CA bundle), the listener's secure context is
 * swapped in place. Handshakes from then on use the new one; connections and tunnels that
 * are open stay as they are.
 */
import type tls from 'node:tls';
import type { Subscription } from 'rxjs';
import type { TlsSource } from '../pki/tls-source.js';
import { certificateSerial } from '../pki/certificates.js';
import type { Logger } from '../observe/log.js';

/** `context` holds the listener's other context options (they are part of what is swapped). */
export function followTlsSource(server: tls.Server, source: TlsSource, what: string, log: Logger, context: tls.SecureContextOptions = {}): Subscription {
  return source.changes.subscribe(({ key, cert, ca }) => {
    try {
      server.setSecureContext({ ...context, key, cert, ca });
      log.info('new TLS certificate in use', { listener: what, serial: certificateSerial(cert) });
    } catch (err) {
      log.error('cannot use the new TLS material; the listener keeps the previous one', { listener: what, reason: (err as Error).message });
    }
  });
}
