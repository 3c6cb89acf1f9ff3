/**
 * PKCS#10 certificate requests (RFC 2986), read the way Go's x509.ParseCertificateRequest and
 * CheckSignature read them, for any key type: node-forge only understands RSA requests, so the
 * structure is walked with forge's generic ASN.1 and the signature is checked with node:crypto
 * against the request's own SubjectPublicKeyInfo, over the exact DER bytes that were signed.
 */
import { constants, createPublicKey, verify, type KeyObject } from 'node:crypto';
import forge from 'node-forge';
import { normalizeIp } from '../../lib/pki/certificates.js';

const { asn1 } = forge;
type Asn1 = forge.asn1.Asn1;

const PEM_TYPE = 'CERTIFICATE REQUEST';
const OID_EXTENSION_REQUEST = '1.2.840.113549.1.9.14';
const OID_SUBJECT_ALT_NAME = '2.5.29.17';
const OID_COMMON_NAME = '2.5.4.3';
const OID_ORGANIZATION = '2.5.4.10';
const OID_RSASSA_PSS = '1.2.840.113549.1.1.10';
const OID_ED25519 = '1.3.101.112';
const OID_MGF1 = '1.2.840.113549.1.1.8';

const SIGNATURE_ALGORITHMS: Record<string, { hash: string; key: 'rsa' | 'ec' }> = {
  '1.2.840.113549.1.1.5': { hash: 'sha1', key: 'rsa' },
  '1.2.840.113549.1.1.11': { hash: 'sha256', key: 'rsa' },
  '1.2.840.113549.1.1.12': { hash: 'sha384', key: 'rsa' },
  '1.2.840.113549.1.1.13': { hash: 'sha512', key: 'rsa' },
  '1.2.840.10045.4.1': { hash: 'sha1', key: 'ec' },
  '1.2.840.10045.4.3.2': { hash: 'sha256', key: 'ec' },
  '1.2.840.10045.4.3.3': { hash: 'sha384', key: 'ec' },
  '1.2.840.10045.4.3.4': { hash: 'sha512', key: 'ec' },
};

const HASH_OIDS: Record<string, string> = {
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};
const HASH_LENGTHS: Record<string, number> = { sha256: 32, sha384: 48, sha512: 64 };

/** GeneralName tags (RFC 5280 4.2.1.6). */
const SAN_EMAIL = 1;
const SAN_DNS = 2;
const SAN_URI = 6;
const SAN_IP = 7;

/** An error in the words Go's parser or verifier would use; validation reports it as spec.request's detail. */
export class CsrError extends Error {}

export interface NameAttribute {
  oid: string;
  value: string;
}

export interface CertificateRequest {
  /** The subject's attributes in order (one entry per value). */
  subject: NameAttribute[];
  commonName: string;
  organizations: string[];
  dnsNames: string[];
  ipAddresses: string[];
  emailAddresses: string[];
  uris: string[];
  /** DER SubjectPublicKeyInfo. */
  publicKeyInfo: Buffer;
  publicKey: KeyObject;
}

/** pem.Decode: the first PEM block in the data, whatever surrounds it. */
export function firstPemBlock(text: string): { type: string; der: Buffer } | undefined {
  const match = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)\r?\n?-----END \1-----/.exec(text);
  if (!match) return undefined;
  const body = match[2].split(/\r?\n/).filter((line) => !line.includes(':')).join('');
  if (!/^[A-Za-z0-9+/=\s]*$/.test(body)) return undefined;
  return { type: match[1], der: Buffer.from(body, 'base64') };
}

/** certificates.ParseCSR then CheckSignature: throws CsrError with Go's message when either fails. */
export function parseCertificateRequest(pem: Buffer): CertificateRequest {
  const block = firstPemBlock(pem.toString('latin1'));
  if (!block || block.type !== PEM_TYPE) throw new CsrError('PEM block type must be CERTIFICATE REQUEST');
  return parseDer(block.der);
}

function parseDer(der: Buffer): CertificateRequest {
  const outer = readElement(der, 0);
  if (outer.tag !== 0x30 || outer.end !== der.length) throw malformed();
  const [info, algorithm, signature] = childrenOfDer(der, outer);
  if (!info || !algorithm || !signature || info.tag !== 0x30 || signature.tag !== 0x03) throw malformed();
  const [version, subject, publicKeyInfo, attributes] = childrenOfDer(der, info);
  if (!version || !subject || !publicKeyInfo || version.tag !== 0x02) throw malformed();

  const subjectAttributes = readName(fromDer(der.subarray(subject.start, subject.end)));
  const spki = Buffer.from(der.subarray(publicKeyInfo.start, publicKeyInfo.end));
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch {
    throw new CsrError('x509: unsupported public key type');
  }
  const sans = attributes && attributes.tag === 0xa0 ? readSans(der.subarray(attributes.start, attributes.end)) : emptySans();
  const signed = der.subarray(info.start, info.end);
  const signatureBits = der.subarray(signature.start + signature.headerLength, signature.end);
  if (signatureBits.length < 1 || signatureBits[0] !== 0) throw malformed();
  checkSignature(fromDer(der.subarray(algorithm.start, algorithm.end)), signed, signatureBits.subarray(1), publicKey);

  return {
    subject: subjectAttributes,
    commonName: subjectAttributes.find((a) => a.oid === OID_COMMON_NAME)?.value ?? '',
    organizations: subjectAttributes.filter((a) => a.oid === OID_ORGANIZATION).map((a) => a.value),
    ...sans,
    publicKeyInfo: spki,
    publicKey,
  };
}

function malformed(): CsrError {
  return new CsrError('x509: malformed certificate request');
}

/** crypto.verify, with a malformed signature counting as one that does not verify (as Go's verifiers treat it). */
function verifies(algorithm: string | null, data: Buffer, key: KeyObject | { key: KeyObject; padding: number; saltLength: number }, signature: Buffer): boolean {
  try {
    return verify(algorithm, data, key, signature);
  } catch {
    return false;
  }
}

function checkSignature(algorithm: Asn1, signed: Buffer, signature: Buffer, key: KeyObject): void {
  const parts = children(algorithm);
  const oid = asn1.derToOid(bytes(parts[0]));
  const keyType = key.asymmetricKeyType;
  let ok: boolean;
  if (oid === OID_ED25519) {
    if (keyType !== 'ed25519') throw new CsrError('x509: signature algorithm specifies an Ed25519 public key, but have public key of another type');
    ok = verifies(null, signed, key, signature);
    if (!ok) throw new CsrError('x509: Ed25519 verification failure');
    return;
  }
  if (oid === OID_RSASSA_PSS) {
    if (keyType !== 'rsa' && keyType !== 'rsa-pss') throw new CsrError('x509: signature algorithm specifies an RSA public key, but have public key of another type');
    const { hash, saltLength } = pssParameters(parts[1]);
    ok = verifies(hash, signed, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength }, signature);
    if (!ok) throw new CsrError('crypto/rsa: verification error');
    return;
  }
  const known = SIGNATURE_ALGORITHMS[oid];
  if (!known) throw new CsrError('x509: cannot verify signature: algorithm unimplemented');
  if (keyType !== known.key) {
    throw new CsrError(`x509: signature algorithm specifies an ${known.key === 'rsa' ? 'RSA' : 'ECDSA'} public key, but have public key of another type`);
  }
  ok = verifies(known.hash, signed, key, signature);
  if (!ok) throw new CsrError(known.key === 'rsa' ? 'crypto/rsa: verification error' : 'x509: ECDSA verification failure');
}

/** RSASSA-PSS-params: the hash (SHA-256/384/512, as Go accepts) and a salt as long as the hash. */
function pssParameters(parameters: Asn1 | undefined): { hash: string; saltLength: number } {
  if (!parameters || !Array.isArray(parameters.value)) throw new CsrError('x509: cannot verify signature: algorithm unimplemented');
  let hash = 'sha1';
  let saltLength = 20;
  for (const field of parameters.value) {
    const inner = Array.isArray(field.value) ? field.value[0] : undefined;
    if (!inner) continue;
    if (field.type === 0) hash = HASH_OIDS[asn1.derToOid(bytes(children(inner)[0]))] ?? 'unknown';
    if (field.type === 1 && asn1.derToOid(bytes(children(inner)[0])) !== OID_MGF1) hash = 'unknown';
    if (field.type === 2) saltLength = forge.util.createBuffer(bytes(inner)).getInt(bytes(inner).length * 8);
  }
  if (!(hash in HASH_LENGTHS) || saltLength !== HASH_LENGTHS[hash]) throw new CsrError('x509: cannot verify signature: algorithm unimplemented');
  return { hash, saltLength };
}

function readName(name: Asn1): NameAttribute[] {
  const attributes: NameAttribute[] = [];
  for (const rdn of children(name)) {
    for (const atv of children(rdn)) {
      const [type, value] = children(atv);
      attributes.push({ oid: asn1.derToOid(bytes(type)), value: decodeString(value) });
    }
  }
  return attributes;
}

function decodeString(node: Asn1): string {
  const raw = bytes(node);
  if (node.type === asn1.Type.UTF8) return forge.util.decodeUtf8(raw);
  if (node.type === asn1.Type.BMPSTRING && raw.length % 2 === 0) return Buffer.from(raw, 'binary').swap16().toString('utf16le');
  return raw;
}

function emptySans(): Pick<CertificateRequest, 'dnsNames' | 'ipAddresses' | 'emailAddresses' | 'uris'> {
  return { dnsNames: [], ipAddresses: [], emailAddresses: [], uris: [] };
}

/** SANs from the extensionRequest attribute, where CSRs carry their requested extensions. */
function readSans(attributesDer: Buffer): Pick<CertificateRequest, 'dnsNames' | 'ipAddresses' | 'emailAddresses' | 'uris'> {
  const sans = emptySans();
  const attributes = fromDer(attributesDer);
  for (const attribute of children(attributes)) {
    const [type, values] = children(attribute);
    if (asn1.derToOid(bytes(type)) !== OID_EXTENSION_REQUEST) continue;
    for (const extensions of children(values)) {
      for (const extension of children(extensions)) {
        const parts = children(extension);
        if (asn1.derToOid(bytes(parts[0])) !== OID_SUBJECT_ALT_NAME) continue;
        for (const name of children(fromDerString(bytes(parts[parts.length - 1])))) {
          const value = bytes(name);
          if (name.type === SAN_DNS) sans.dnsNames.push(value);
          else if (name.type === SAN_EMAIL) sans.emailAddresses.push(value);
          else if (name.type === SAN_URI) sans.uris.push(value);
          else if (name.type === SAN_IP) sans.ipAddresses.push(ipText(Buffer.from(value, 'binary')));
        }
      }
    }
  }
  return sans;
}

/** net.IP.String(): dotted quad, or IPv6 in its canonical compressed form. */
function ipText(raw: Buffer): string {
  if (raw.length === 4) return [...raw].join('.');
  const groups: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) groups.push(raw.readUInt16BE(i).toString(16));
  try {
    return normalizeIp(groups.join(':'));
  } catch {
    return groups.join(':');
  }
}

interface Element {
  tag: number;
  start: number;
  headerLength: number;
  end: number;
}

/** One DER element at an offset: tag, where it starts and ends, how long its header is. */
function readElement(der: Buffer, offset: number): Element {
  if (offset + 2 > der.length) throw malformed();
  const tag = der[offset];
  let length = der[offset + 1];
  let headerLength = 2;
  if (length & 0x80) {
    const count = length & 0x7f;
    if (count === 0 || count > 4 || offset + 2 + count > der.length) throw malformed();
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + der[offset + 2 + i];
    headerLength += count;
  }
  const end = offset + headerLength + length;
  if (end > der.length) throw malformed();
  return { tag, start: offset, headerLength, end };
}

function childrenOfDer(der: Buffer, parent: Element): Element[] {
  const result: Element[] = [];
  for (let at = parent.start + parent.headerLength; at < parent.end;) {
    const element = readElement(der, at);
    result.push(element);
    at = element.end;
  }
  return result;
}

function fromDer(der: Buffer): Asn1 {
  return fromDerString(der.toString('binary'));
}

/** forge's parser, keeping BIT STRINGs as bytes (a key or signature might look like nested ASN.1). */
function fromDerString(der: string): Asn1 {
  const parse = asn1.fromDer as typeof asn1.fromDer & ((bytes: string, options: { decodeBitStrings: boolean }) => Asn1);
  try {
    return parse(der, { decodeBitStrings: false });
  } catch {
    throw malformed();
  }
}

function children(node: Asn1 | undefined): Asn1[] {
  if (!node || !Array.isArray(node.value)) throw malformed();
  return node.value;
}

function bytes(node: Asn1 | undefined): string {
  if (!node || typeof node.value !== 'string') throw malformed();
  return node.value;
}
