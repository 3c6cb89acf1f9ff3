/**
 * Who is on the other end of an mTLS connection, as its client certificate says: the
 * subject's CN and O entries (the user and groups, in Kubernetes' reading of a client
 * certificate), which the server's role and cluster checks work from.
 */
import { TLSSocket } from 'node:tls';

export interface PeerIdentity {
  commonName: string;
  organization: string[];
}

/** The verified client certificate's subject, or undefined on a plain (unix socket) connection. */
export function peerIdentity(socket: unknown): PeerIdentity | undefined {
  if (!(socket instanceof TLSSocket) || !socket.authorized) return undefined;
  const subject = socket.getPeerCertificate(false)?.subject as Record<string, string | string[] | undefined> | undefined;
  if (!subject) return undefined;
  const list = (value: string | string[] | undefined) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);
  return { commonName: list(subject.CN)[0] ?? '', organization: list(subject.O) };
}

/** The subject as operators read it, e.g. `CN=tunnel:agent:c1, O=tunnel:agents`. */
export function describePeer(identity: PeerIdentity | undefined): string {
  if (!identity) return 'no client certificate';
  return [`CN=${identity.commonName}`, ...identity.organization.map((o) => `O=${o}`)].join(', ');
}
