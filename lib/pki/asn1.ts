/**
 * The DER building blocks that certificates and certificate requests share: node-forge
 * encodes names and extensions, as it always has; everything around them (TBSCertificate,
 * CertificationRequestInfo) is assembled here from forge's ASN.1 values, because forge's own
 * X.509 and PKCS#10 code knows RSA keys only. Byte strings are forge's (binary strings).
 */
import { createHash } from 'node:crypto';
import forge from 'node-forge';

export const { asn1 } = forge;
export type Asn1 = forge.asn1.Asn1;

/** RFC 5280 4.1.2.5: validity dates through 2049 are UTCTime, later ones GeneralizedTime. */
const FIRST_GENERALIZED_TIME_YEAR = 2050;

export const OID = {
  commonName: '2.5.4.3',
  organizationName: '2.5.4.10',
  subjectAltName: '2.5.29.17',
  extensionRequest: '1.2.840.113549.1.9.14',
  ecPublicKey: '1.2.840.10045.2.1',
  rsaEncryption: '1.2.840.113549.1.1.1',
  ed25519: '1.3.101.112',
  prime256v1: '1.2.840.10045.3.1.7',
  secp384r1: '1.3.132.0.34',
  secp521r1: '1.3.132.0.35',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  ecdsaWithSha512: '1.2.840.10045.4.3.4',
  sha256WithRsa: '1.2.840.113549.1.1.11',
  sha384WithRsa: '1.2.840.113549.1.1.12',
  sha512WithRsa: '1.2.840.113549.1.1.13',
} as const;

/** The hash each signature algorithm that may sign a request uses. */
export const SIGNATURE_HASHES: Record<string, string> = {
  [OID.ecdsaWithSha256]: 'sha256',
  [OID.ecdsaWithSha384]: 'sha384',
  [OID.ecdsaWithSha512]: 'sha512',
  [OID.sha256WithRsa]: 'sha256',
  [OID.sha384WithRsa]: 'sha384',
  [OID.sha512WithRsa]: 'sha512',
};

/** General name tags of RFC 5280 4.2.1.6 that this project reads. */
export const GENERAL_NAME = { rfc822: 1, dns: 2, uri: 6, ip: 7 } as const;

/** forge encodes the Name: attribute OIDs and string types as it always has. */
export function encodeName(attributes: forge.pki.CertificateField[]): Asn1 {
  const draft = forge.pki.createCertificate();
  draft.setSubject(attributes);
  return forge.pki.distinguishedNameToAsn1(draft.subject);
}

/** forge encodes the extensions, as the [3] EXPLICIT Extensions field of a TBSCertificate. */
export function encodeExtensions(extensions: object[]): Asn1 {
  const draft = forge.pki.createCertificate();
  draft.setExtensions(extensions);
  return (forge.pki as typeof forge.pki & ForgePkiExtras).certificateExtensionsToAsn1(draft.extensions as object[]);
}

/** Part of forge.pki that @types/node-forge does not declare. */
interface ForgePkiExtras {
  certificateExtensionsToAsn1(extensions: object[]): Asn1;
}

/** RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING, without its unused-bits byte. */
export function keyIdentifierOf(publicKeyInfo: Asn1): string {
  const subjectPublicKey = bytesOf(child(publicKeyInfo, 1));
  return createHash('sha1').update(Buffer.from(subjectPublicKey.slice(1), 'binary')).digest('binary');
}

/**
 * Parses DER with forge, keeping BIT STRING contents as plain bytes: by default forge tries to
 * read them as nested ASN.1, which a public key or signature may happen to look like.
 */
export function parseDer(der: string): Asn1 {
  const fromDer = asn1.fromDer as typeof asn1.fromDer & ((bytes: string, options: { decodeBitStrings: boolean }) => Asn1);
  return fromDer(der, { decodeBitStrings: false });
}

export function toDer(node: Asn1): Buffer {
  return Buffer.from(asn1.toDer(node).getBytes(), 'binary');
}

export function childrenOf(node: Asn1): Asn1[] {
  if (!Array.isArray(node.value)) throw new Error('malformed DER: expected a constructed ASN.1 value');
  return node.value;
}

export function child(parent: Asn1 | Asn1[], index: number): Asn1 {
  const node = (Array.isArray(parent) ? parent : childrenOf(parent))[index];
  if (!node) throw new Error(`malformed DER: ASN.1 value ${index} is missing`);
  return node;
}

export function bytesOf(node: Asn1): string {
  if (typeof node.value !== 'string') throw new Error('malformed DER: expected a primitive ASN.1 value');
  return node.value;
}

export function oidOf(node: Asn1): string {
  return asn1.derToOid(bytesOf(node));
}

export function sequence(items: Asn1[]): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, items);
}

export function set(items: Asn1[]): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, items);
}

export function primitive(type: forge.asn1.Type, bytes: string): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, type, false, bytes);
}

export function oid(id: string): Asn1 {
  return primitive(asn1.Type.OID, asn1.oidToDer(id).getBytes());
}

export function explicit(tag: number, inner: Asn1): Asn1 {
  return asn1.create(asn1.Class.CONTEXT_SPECIFIC, tag, true, [inner]);
}

export function isContextTag(node: Asn1 | undefined, tag: number): boolean {
  return node?.tagClass === asn1.Class.CONTEXT_SPECIFIC && node.type === tag;
}

export function time(date: Date): Asn1 {
  return date.getUTCFullYear() < FIRST_GENERALIZED_TIME_YEAR
    ? primitive(asn1.Type.UTCTIME, asn1.dateToUtcTime(date))
    : primitive(asn1.Type.GENERALIZEDTIME, asn1.dateToGeneralizedTime(date));
}

/** The attributes of a Name, in order, as [OID, text] pairs (strings of any DirectoryString type). */
export function decodeName(name: Asn1): Array<[string, string]> {
  const attributes: Array<[string, string]> = [];
  for (const rdn of childrenOf(name)) {
    for (const pair of childrenOf(rdn)) {
      const value = child(pair, 1);
      const raw = bytesOf(value);
      // BMPString is UTF-16BE; the other string types are ASCII or UTF-8.
      const text = value.type === asn1.Type.BMPSTRING ? Buffer.from(raw, 'binary').swap16().toString('utf16le') : Buffer.from(raw, 'binary').toString('utf8');
      attributes.push([oidOf(child(pair, 0)), text]);
    }
  }
  return attributes;
}

/** The names of a GeneralNames value (the content of a subjectAltName extension). */
export function decodeGeneralNames(names: Asn1): Array<{ tag: number; value: string }> {
  return childrenOf(names).map((name) => {
    if (name.tagClass !== asn1.Class.CONTEXT_SPECIFIC) throw new Error('malformed DER: a general name without a context tag');
    if (name.type === GENERAL_NAME.ip) return { tag: name.type, value: ipFromBytes(Buffer.from(bytesOf(name), 'binary')) };
    return { tag: name.type, value: typeof name.value === 'string' ? name.value : '' };
  });
}

function ipFromBytes(bytes: Buffer): string {
  if (bytes.length === 4) return [...bytes].join('.');
  if (bytes.length === 16) {
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
    return groups.join(':');
  }
  throw new Error(`malformed DER: an IP address of ${bytes.length} bytes`);
}
