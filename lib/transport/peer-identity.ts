/**
 * Who is on the other end of an mTLS connection, as its client certificate says: the
 * subject's CN and O entries (the user and groups, in Kubernetes' reading of a client
 * certificate), which the server's role and cluster checks work from.
 */
import { TLSSocket } from 'node:tls';

/** Shared by the connections of one certificate: never changed. */
export interface PeerIdentity {
  readonly commonName: string;
  readonly organization: readonly string[];
  /** The certificate's DNS and URI subject alternative names (for client authorization rules). */
  readonly dnsNames?: readonly string[];
  readonly uris?: readonly string[];
}

/**
 * Identities of recent client certificates, by their SHA-256 fingerprint. A certificate
 * comes back on every connection its client opens, and Node's detailed form of it (which
 * also works out three fingerprints and exports the public key) cost 30 µs more per
 * connection than the fingerprint alone here.
 */
const identities = new Map<string, PeerIdentity>();
const MAX_IDENTITIES = 1024;

/** The verified client certificate's subject, or undefined on a plain (unix socket) connection. */
export function peerIdentity(socket: unknown): PeerIdentity | undefined {
  if (!(socket instanceof TLSSocket) || !socket.authorized) return undefined;
  const certificate = socket.getPeerX509Certificate();
  const fingerprint = certificate?.fingerprint256;
  if (fingerprint === undefined) return undefined;
  let identity = identities.get(fingerprint);
  if (identity === undefined) {
    const subject = socket.getPeerCertificate(false)?.subject as Record<string, string | string[] | undefined> | undefined;
    if (!subject) return undefined;
    const list = (value: string | string[] | undefined) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);
    const sans = alternativeNames(certificate?.subjectAltName ?? '');
    identity = { commonName: list(subject.CN)[0] ?? '', organization: list(subject.O), dnsNames: sans.get('DNS') ?? [], uris: sans.get('URI') ?? [] };
    // Oldest first out: a rotated fleet's old certificates leave as new ones come.
    if (identities.size >= MAX_IDENTITIES) identities.delete(identities.keys().next().value!);
    identities.set(fingerprint, identity);
  }
  return identity;
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
