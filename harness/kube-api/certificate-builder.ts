/**
 * Issues a certificate for a parsed CSR, laid out as Go's x509.CreateCertificate lays out what
 * kube-controller-manager's signer asks for: the subject re-encoded in pkix.Name order (C, ST,
 * L, street, postal code, O, OU, CN, serial number; several values of one type in one RDN),
 * the requested SANs and public key, key usage and extended key usage from the CSR's usages,
 * basic constraints CA:false, and the CA's key identifier as authority key identifier.
 * lib/pki/certificates.ts issues certificates for keys it generates; this one signs a key it
 * was given, so it assembles the TBSCertificate itself with forge's ASN.1 and node:crypto.
 */
import { createPrivateKey, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import forge from 'node-forge';
import type { CertificateRequest, NameAttribute } from './csr-request.js';

const { asn1 } = forge;
type Asn1 = forge.asn1.Asn1;

const OID_ECDSA_SHA256 = '1.2.840.10045.4.3.2';
const OID_RSA_SHA256 = '1.2.840.113549.1.1.11';
const OID_KEY_USAGE = '2.5.29.15';
const OID_EXT_KEY_USAGE = '2.5.29.37';
const OID_BASIC_CONSTRAINTS = '2.5.29.19';
const OID_AUTHORITY_KEY_ID = '2.5.29.35';
const OID_SUBJECT_KEY_ID = '2.5.29.14';
const OID_SUBJECT_ALT_NAME = '2.5.29.17';
const FIRST_GENERALIZED_TIME_YEAR = 2050;

/** pkix.Name.ToRDNSequence's order of attribute types; others follow in request order. */
const NAME_ORDER = ['2.5.4.6', '2.5.4.8', '2.5.4.7', '2.5.4.9', '2.5.4.17', '2.5.4.10', '2.5.4.11', '2.5.4.3', '2.5.4.5'];

/** KeyUsage bits (RFC 5280 4.2.1.3) of the CSR usages kcm maps to them. */
const KEY_USAGE_BITS: Record<string, number> = {
  signing: 0, 'digital signature': 0, 'content commitment': 1, 'key encipherment': 2, 'data encipherment': 3,
  'key agreement': 4, 'cert sign': 5, 'crl sign': 6, 'encipher only': 7, 'decipher only': 8,
};
const EXT_KEY_USAGE_OIDS: Record<string, string> = {
  any: '2.5.29.37.0', 'server auth': '1.3.6.1.5.5.7.3.1', 'client auth': '1.3.6.1.5.5.7.3.2', 'code signing': '1.3.6.1.5.5.7.3.3',
  'email protection': '1.3.6.1.5.5.7.3.4', 's/mime': '1.3.6.1.5.5.7.3.4', 'ipsec end system': '1.3.6.1.5.5.7.3.5',
  'ipsec tunnel': '1.3.6.1.5.5.7.3.6', 'ipsec user': '1.3.6.1.5.5.7.3.7', timestamping: '1.3.6.1.5.5.7.3.8',
  'ocsp signing': '1.3.6.1.5.5.7.3.9', 'microsoft sgc': '1.3.6.1.4.1.311.10.3.3', 'netscape sgc': '2.16.840.1.113730.4.1',
};

export interface SigningCa {
  certPem: string;
  keyPem: string;
}

export interface Validity {
  notBefore: Date;
  notAfter: Date;
}

/** Signs the request's key and names into a PEM certificate issued by the CA. */
export function issueFromRequest(ca: SigningCa, request: CertificateRequest, usages: string[], validity: Validity): string {
  const caCert = new X509Certificate(ca.certPem);
  const caKey = createPrivateKey(ca.keyPem);
  const caFields = children(parse(caCert.raw))[0];
  const caTbs = children(caFields);
  const offset = caTbs[0].tagClass === asn1.Class.CONTEXT_SPECIFIC ? 1 : 0;
  const issuer = caTbs[offset + 4];
  const caKeyId = subjectKeyIdOf(caTbs);
  const algorithm = signatureAlgorithm(caKey);
  const tbs = sequence([
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [primitive(asn1.Type.INTEGER, asn1.integerToDer(2).getBytes())]),
    primitive(asn1.Type.INTEGER, serialNumber()),
    algorithm,
    issuer,
    sequence([time(validity.notBefore), time(validity.notAfter)]),
    encodeName(request.subject),
    parse(request.publicKeyInfo),
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 3, true, [sequence(extensions(request, usages, caKeyId))]),
  ]);
  const tbsDer = Buffer.from(asn1.toDer(tbs).getBytes(), 'binary');
  const signature = sign('sha256', tbsDer, caKey);
  const certificate = sequence([tbs, algorithm, primitive(asn1.Type.BITSTRING, `\x00${signature.toString('binary')}`)]);
  return new X509Certificate(Buffer.from(asn1.toDer(certificate).getBytes(), 'binary')).toString();
}

function extensions(request: CertificateRequest, usages: string[], caKeyId: string | undefined): Asn1[] {
  const result: Asn1[] = [];
  const bits = [...new Set(usages.map((u) => KEY_USAGE_BITS[u]).filter((b) => b !== undefined))];
  if (bits.length > 0) result.push(extension(OID_KEY_USAGE, true, keyUsageBitString(bits)));
  const ekus = [...new Set(usages.map((u) => EXT_KEY_USAGE_OIDS[u]).filter((o) => o !== undefined))];
  if (ekus.length > 0) result.push(extension(OID_EXT_KEY_USAGE, false, sequence(ekus.map(oid))));
  result.push(extension(OID_BASIC_CONSTRAINTS, true, sequence([])));
  if (caKeyId !== undefined) {
    result.push(extension(OID_AUTHORITY_KEY_ID, false, sequence([asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, false, caKeyId)])));
  }
  const names = [
    ...request.emailAddresses.map((v) => asn1.create(asn1.Class.CONTEXT_SPECIFIC, 1, false, v)),
    ...request.dnsNames.map((v) => asn1.create(asn1.Class.CONTEXT_SPECIFIC, 2, false, v)),
    ...request.uris.map((v) => asn1.create(asn1.Class.CONTEXT_SPECIFIC, 6, false, v)),
    ...request.ipAddresses.map((v) => asn1.create(asn1.Class.CONTEXT_SPECIFIC, 7, false, ipBytes(v))),
  ];
  if (names.length > 0) result.push(extension(OID_SUBJECT_ALT_NAME, request.subject.length === 0, sequence(names)));
  return result;
}

function extension(id: string, critical: boolean, value: Asn1): Asn1 {
  const parts = [oid(id)];
  if (critical) parts.push(primitive(asn1.Type.BOOLEAN, '\xff'));
  parts.push(primitive(asn1.Type.OCTETSTRING, asn1.toDer(value).getBytes()));
  return sequence(parts);
}

/** A DER BIT STRING with the given bits set, trailing zero bits trimmed (as Go encodes KeyUsage). */
function keyUsageBitString(bits: number[]): Asn1 {
  const highest = Math.max(...bits);
  const bytes = Buffer.alloc(Math.floor(highest / 8) + 1);
  for (const bit of bits) bytes[Math.floor(bit / 8)] |= 0x80 >> (bit % 8);
  const unused = 7 - (highest % 8);
  return primitive(asn1.Type.BITSTRING, String.fromCharCode(unused) + bytes.toString('binary'));
}

/** The subject in pkix.Name order, each attribute type as one RDN, PrintableString where it can be. */
function encodeName(attributes: NameAttribute[]): Asn1 {
  const types = [...NAME_ORDER, ...attributes.map((a) => a.oid).filter((o) => !NAME_ORDER.includes(o))];
  const rdns: Asn1[] = [];
  for (const type of [...new Set(types)]) {
    const values = attributes.filter((a) => a.oid === type);
    if (values.length === 0) continue;
    rdns.push(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, values.map((v) => sequence([oid(v.oid), nameString(v.value)]))));
  }
  return sequence(rdns);
}

function nameString(value: string): Asn1 {
  return /^[A-Za-z0-9 '()+,\-./:=?]*$/.test(value)
    ? primitive(asn1.Type.PRINTABLESTRING, value)
    : primitive(asn1.Type.UTF8, forge.util.encodeUtf8(value));
}

function subjectKeyIdOf(tbs: Asn1[]): string | undefined {
  const wrapper = tbs.find((f) => f.tagClass === asn1.Class.CONTEXT_SPECIFIC && f.type === 3);
  if (!wrapper) return undefined;
  for (const ext of children(children(wrapper)[0])) {
    const parts = children(ext);
    if (asn1.derToOid(bytes(parts[0])) !== OID_SUBJECT_KEY_ID) continue;
    return bytes(asn1.fromDer(bytes(parts[parts.length - 1])));
  }
  return undefined;
}

function signatureAlgorithm(key: KeyObject): Asn1 {
  if (key.asymmetricKeyType === 'ec') return sequence([oid(OID_ECDSA_SHA256)]);
  if (key.asymmetricKeyType === 'rsa') return sequence([oid(OID_RSA_SHA256), primitive(asn1.Type.NULL, '')]);
  throw new Error(`the signing CA has a ${key.asymmetricKeyType} key; only EC and RSA CAs can sign here`);
}

/** A random positive serial below 2^63, as kcm draws it (rand.Int up to MaxInt64). */
function serialNumber(): string {
  const raw = randomBytes(8);
  raw[0] &= 0x7f;
  if (raw[0] === 0) raw[0] = 0x01;
  return raw.toString('binary');
}

function ipBytes(ip: string): string {
  if (isIP(ip) === 4) return Buffer.from(ip.split('.').map(Number)).toString('binary');
  const [head, tail] = ip.split('::');
  const left = head ? head.split(':') : [];
  const right = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const buf = Buffer.alloc(16);
  groups.forEach((g, i) => buf.writeUInt16BE(parseInt(g, 16), i * 2));
  return buf.toString('binary');
}

function time(date: Date): Asn1 {
  return date.getUTCFullYear() < FIRST_GENERALIZED_TIME_YEAR
    ? primitive(asn1.Type.UTCTIME, asn1.dateToUtcTime(date))
    : primitive(asn1.Type.GENERALIZEDTIME, asn1.dateToGeneralizedTime(date));
}

function parse(der: Buffer): Asn1 {
  const fromDer = asn1.fromDer as typeof asn1.fromDer & ((bytes: string, options: { decodeBitStrings: boolean }) => Asn1);
  return fromDer(der.toString('binary'), { decodeBitStrings: false });
}

function sequence(items: Asn1[]): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, items);
}

function primitive(type: forge.asn1.Type, value: string): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, type, false, value);
}

function oid(id: string): Asn1 {
  return primitive(asn1.Type.OID, asn1.oidToDer(id).getBytes());
}

function children(node: Asn1): Asn1[] {
  if (!Array.isArray(node.value)) throw new Error('malformed CA certificate');
  return node.value;
}

function bytes(node: Asn1): string {
  if (typeof node.value !== 'string') throw new Error('malformed CA certificate');
  return node.value;
}
