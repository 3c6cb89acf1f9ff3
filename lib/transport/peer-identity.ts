/**
 * Who is on the other end of an mTLS connection, as its client certificate says: the
 * subject's CN and O entries (the user and groups, in Kubernetes' reading of a client
 * certificate), which the server's role and cluster checks work from.
 */
import { TLSSocket } from 'node:tls';

export interface PeerIdentity {
  readonly commonName: string;
  readonly organization: readonly string[];
  /** The certificate's DNS and URI subject alternative names (for client authorization rules). */
  readonly dnsNames?: readonly string[];
  readonly uris?: readonly string[];
}

/**
 * The verified client certificate's subject, or undefined on a plain (unix socket) connection.
 * Read once per connection: Node's short form of the certificate is the cheapest it offers
 * (`getPeerX509Certificate`, which would give a fingerprint to cache identities by, copies the
 * chain, and cost the server twice as much CPU per connection under churn).
 */
export function peerIdentity(socket: unknown): PeerIdentity | undefined {
  if (!(socket instanceof TLSSocket) || !socket.authorized) return undefined;
  const certificate = socket.getPeerCertificate(false);
  const subject = certificate?.subject as Record<string, string | string[] | undefined> | undefined;
  if (!subject) return undefined;
  const list = (value: string | string[] | undefined) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);
  const sans = alternativeNames(certificate.subjectaltname ?? '');
  return { commonName: list(subject.CN)[0] ?? '', organization: list(subject.O), dnsNames: sans.get('DNS') ?? [], uris: sans.get('URI') ?? [] };
}

/**
 * Node's subject alternative names text (`DNS:a, URI:spiffe://x, IP Address:10.0.0.1`), by
 * type. A value with a comma or quote in it comes as a JSON string.
 */
function alternativeNames(text: string): Map<string, string[]> {
  const names = new Map<string, string[]>();
  for (const match of text.matchAll(/(?:^|, )([A-Za-z ]+):("(?:[^"\\]|\\.)*"|[^,]*)/g)) {
    let value = match[2];
    if (value.startsWith('"')) {
      try {
        value = JSON.parse(value) as string;
      } catch {
        continue;
      }
    }
    names.set(match[1], [...(names.get(match[1]) ?? []), value]);
  }
  return names;
}

/** The subject as operators read it, e.g. `CN=tunnel:agent:c1, O=tunnel:agents`. */
export function describePeer(identity: PeerIdentity | undefined): string {
  if (!identity) return 'no client certificate';
  return [`CN=${identity.commonName}`, ...identity.organization.map((o) => `O=${o}`)].join(', ');
}
