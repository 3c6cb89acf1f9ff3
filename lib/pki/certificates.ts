/**
 * Pure certificate functions for the local PKI: create a CA, issue leaf certificates from it,
 * and read back what a certificate says.
 *
 * Keys are ECDSA P-256 (prime256v1), signatures ecdsa-with-SHA256: a TLS handshake then costs
 * each side a far cheaper signature than with RSA-2048 (bench scenario churn), and the
 * certificates match what OpenYurt's yurt-tunnel issues. node:crypto generates the keys and signs; node-forge only
 * knows RSA keys, so it is used for what it does well, encoding names and extensions, and the
 * TBSCertificate around them is assembled here (RFC 5280 4.1). A CA from an earlier version
 * may still have an RSA key: issuing from it keeps working, signed sha256WithRSAEncryption.
 * Reading goes through node:crypto's X509Certificate, which understands any key type.
 */
import { createPrivateKey, generateKeyPairSync, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP, SocketAddress } from 'node:net';
import {
  asn1, bytesOf, child, childrenOf, encodeExtensions, encodeName, explicit, isContextTag, keyIdentifierOf, oid, parseDer, primitive, sequence, time,
  type Asn1,
} from './asn1.js';

const EC_CURVE = 'prime256v1';
const OID_ECDSA_WITH_SHA256 = '1.2.840.10045.4.3.2';
const OID_SHA256_WITH_RSA = '1.2.840.113549.1.1.11';
const OID_SUBJECT_KEY_IDENTIFIER = '2.5.29.14';
/** The version field of an X.509 v3 certificate (the one with extensions) holds 2. */
const X509_V3 = 2;
export const DEFAULT_CA_DAYS = 3650;
export const DEFAULT_LEAF_DAYS = 365;
/** Backdating notBefore tolerates clock skew between the hub and managed clusters. */
const BACKDATE_MS = 5 * 60_000;
const DAY_MS = 86_400_000;
const SERIAL_BYTES = 16;
const SAN_TYPE_DNS = 2;
const SAN_TYPE_IP = 7;
/** Letters, digits, '-', '_', '.', and an optional leading wildcard label. */
const DNS_NAME = /^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$/;

export interface CertificateAndKey {
  certPem: string;
  keyPem: string;
}

export type CertificateUsage = 'server' | 'client' | 'both';

export interface LeafRequest {
  commonName: string;
  /** Subject O entries; Kubernetes reads them as group names of a client certificate. */
  organization?: string[];
  usage: CertificateUsage;
  dnsNames?: string[];
  ips?: string[];
  days?: number;
  /** Lifetime in seconds, for short-lived certificates; takes precedence over days. */
  lifetimeSeconds?: number;
}

export interface CertificateSans {
  dnsNames: string[];
  ips: string[];
}

export interface CertificateSummary extends CertificateSans {
  subject: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  /** SHA-256 fingerprint as printed by openssl, e.g. AB:CD:... */
  fingerprint256: string;
}

/** Creates a self-signed CA that may only sign certificates (and CRLs). */
export function createCa(commonName: string, days: number = DEFAULT_CA_DAYS): CertificateAndKey {
  requireCommonName(commonName);
  requireDays(days);
  const key = generateEcKey();
  const subject = encodeName([{ name: 'commonName', value: commonName }]);
  const self: Issuer = { name: subject, keyIdentifier: key.keyIdentifier, privateKey: key.privateKey };
  const certPem = buildCertificate(self, {
    subject,
    publicKeyInfo: key.publicKeyInfo,
    lifetimeMs: days * DAY_MS,
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
      subjectKeyIdentifier(key.keyIdentifier),
    ],
  });
  return { certPem, keyPem: key.keyPem };
}

/** Issues a leaf certificate with a fresh key, signed by ca (whose key may be EC or, from an earlier version, RSA). */
export function issueCertificate(ca: CertificateAndKey, request: LeafRequest): CertificateAndKey {
  const key = generateEcKey();
  return { certPem: buildLeaf(ca, request, key.publicKeyInfo, key.keyIdentifier), keyPem: key.keyPem };
}

/**
 * Signs a leaf certificate for a public key held elsewhere (a certificate request's), given
 * as a DER SubjectPublicKeyInfo: what a signer does once it has approved a request.
 */
export function signCertificate(ca: CertificateAndKey, request: LeafRequest, publicKeyInfoDer: Buffer): string {
  const publicKeyInfo = parseDer(publicKeyInfoDer.toString('binary'));
  return buildLeaf(ca, request, publicKeyInfo, keyIdentifierOf(publicKeyInfo));
}

function buildLeaf(ca: CertificateAndKey, request: LeafRequest, publicKeyInfo: Asn1, keyIdentifier: string): string {
  requireCommonName(request.commonName);
  const lifetimeMs = leafLifetimeMs(request);
  const dnsNames = (request.dnsNames ?? []).map(checkDnsName);
  const ips = (request.ips ?? []).map(normalizeIp);
  const issuer = readIssuer(ca);
  const altNames = [
    ...dnsNames.map((value) => ({ type: SAN_TYPE_DNS, value })),
    ...ips.map((ip) => ({ type: SAN_TYPE_IP, ip })),
  ];
  return buildCertificate(issuer, {
    subject: encodeName([
      ...(request.organization ?? []).map((value) => ({ name: 'organizationName', value })),
      { name: 'commonName', value: request.commonName },
    ]),
    publicKeyInfo,
    lifetimeMs,
    extensions: [
      { name: 'basicConstraints', cA: false, critical: true },
      // An ECDSA key only signs; keyEncipherment is for RSA key transport.
      { name: 'keyUsage', digitalSignature: true, critical: true },
      { name: 'extKeyUsage', serverAuth: request.usage !== 'client', clientAuth: request.usage !== 'server' },
      ...(altNames.length > 0 ? [{ name: 'subjectAltName', altNames }] : []),
      subjectKeyIdentifier(keyIdentifier),
      { name: 'authorityKeyIdentifier', keyIdentifier: issuer.keyIdentifier },
    ],
  });
}

function leafLifetimeMs(request: LeafRequest): number {
  if (request.lifetimeSeconds !== undefined) {
    if (!Number.isInteger(request.lifetimeSeconds) || request.lifetimeSeconds <= 0) throw new Error(`certificate lifetime must be a whole number of seconds > 0, got ${request.lifetimeSeconds}`);
    return request.lifetimeSeconds * 1000;
  }
  const days = request.days ?? DEFAULT_LEAF_DAYS;
  requireDays(days);
  return days * DAY_MS;
}

/** The DNS and IP subject alternative names; IPs in canonical form (e.g. ::1, not 0:0:...:1). */
export function certificateSans(certPem: string | Buffer): CertificateSans {
  const sans: CertificateSans = { dnsNames: [], ips: [] };
  const text = new X509Certificate(certPem).subjectAltName;
  for (const [type, value] of parseSubjectAltName(text ?? '')) {
    if (type === 'DNS') sans.dnsNames.push(value);
    else if (type === 'IP Address') sans.ips.push(normalizeIp(value));
  }
  return sans;
}

/** The serial number as openssl prints it (hex), to tell certificates apart in logs. */
export function certificateSerial(certPem: string | Buffer): string {
  return new X509Certificate(certPem).serialNumber;
}

export function certificateExpiry(certPem: string | Buffer): Date {
  return new Date(new X509Certificate(certPem).validTo);
}

/** What an operator wants to see about a certificate (tunnel-pki show). */
export function describeCertificate(certPem: string | Buffer): CertificateSummary {
  const x509 = new X509Certificate(certPem);
  return {
    subject: oneLineName(x509.subject),
    issuer: oneLineName(x509.issuer),
    ...certificateSans(certPem),
    notBefore: new Date(x509.validFrom),
    notAfter: new Date(x509.validTo),
    fingerprint256: x509.fingerprint256,
  };
}

/**
 * Canonical text form of an IP address, so SANs compare equal however they were written.
 * Throws an operator-facing error for anything that is not an IPv4 or IPv6 address.
 */
export function normalizeIp(ip: string): string {
  const family = isIP(ip.trim());
  if (family === 0) {
    throw new Error(`"${ip}" is not an IP address: give IPv4 (10.0.0.1) or IPv6 (fd00::1) addresses for IP SANs`);
  }
  return new SocketAddress({ address: ip.trim(), family: family === 4 ? 'ipv4' : 'ipv6' }).address;
}

function requireCommonName(commonName: string): void {
  if (commonName.trim() === '') throw new Error('a certificate needs a non-empty common name (CN)');
}

function checkDnsName(name: string): string {
  if (!DNS_NAME.test(name)) {
    throw new Error(`"${name}" is not a DNS name for a certificate SAN: use letters, digits, '-' and '.' (e.g. tunnel.example.com)`);
  }
  return name;
}

function requireDays(days: number): void {
  if (!Number.isInteger(days) || days <= 0) throw new Error(`certificate validity must be a whole number of days > 0, got ${days}`);
}

/** A fresh key pair and what a certificate for it needs. Byte strings are forge's (binary strings). */
interface NewKey {
  keyPem: string;
  privateKey: KeyObject;
  /** SubjectPublicKeyInfo exactly as node:crypto exports it. */
  publicKeyInfo: Asn1;
  keyIdentifier: string;
}

/** The CA side of a certificate. */
interface Issuer {
  /** The CA's subject Name, which becomes the certificate's issuer. */
  name: Asn1;
  /** The CA's subjectKeyIdentifier, which becomes the authorityKeyIdentifier. */
  keyIdentifier: string;
  privateKey: KeyObject;
}

interface CertificateContent {
  subject: Asn1;
  publicKeyInfo: Asn1;
  lifetimeMs: number;
  /** Extensions as forge describes them (see forge.pki.Certificate.setExtensions). */
  extensions: object[];
}

function generateEcKey(): NewKey {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: EC_CURVE });
  const publicKeyInfo = parseDer(publicKey.export({ type: 'spki', format: 'der' }).toString('binary'));
  return {
    keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    privateKey,
    publicKeyInfo,
    keyIdentifier: keyIdentifierOf(publicKeyInfo),
  };
}

/**
 * The CA as issuer: its subject Name copied verbatim from its certificate (so the leaf's issuer
 * matches it byte for byte), its key identifier, and its private key, of whatever type.
 */
function readIssuer(ca: CertificateAndKey): Issuer {
  const caCert = new X509Certificate(ca.certPem);
  const privateKey = createPrivateKey(ca.keyPem);
  if (!caCert.checkPrivateKey(privateKey)) {
    throw new Error('the CA private key does not belong to the CA certificate: restore the key that was created with it');
  }
  const tbs = readTbs(parseDer(caCert.raw.toString('binary')));
  return {
    name: tbs.subject,
    keyIdentifier: subjectKeyIdentifierIn(tbs.extensions) ?? keyIdentifierOf(tbs.publicKeyInfo),
    privateKey,
  };
}

/**
 * Assembles the TBSCertificate (RFC 5280 4.1), signs its DER with the issuer's key through
 * node:crypto (which gives ECDSA signatures DER-encoded, as X.509 wants them) and returns the PEM.
 */
function buildCertificate(issuer: Issuer, content: CertificateContent): string {
  const algorithm = signatureAlgorithm(issuer.privateKey);
  const now = Date.now();
  const tbs = sequence([
    explicit(0, primitive(asn1.Type.INTEGER, asn1.integerToDer(X509_V3).getBytes())),
    primitive(asn1.Type.INTEGER, randomSerial()),
    algorithm,
    issuer.name,
    // Backdated for clock skew, by a tenth of the lifetime at most: a short-lived
    // certificate's renewal schedule runs from its notBefore.
    sequence([time(new Date(now - Math.min(BACKDATE_MS, content.lifetimeMs / 10))), time(new Date(now + content.lifetimeMs))]),
    content.subject,
    content.publicKeyInfo,
    encodeExtensions(content.extensions),
  ]);
  const signature = sign('sha256', Buffer.from(asn1.toDer(tbs).getBytes(), 'binary'), issuer.privateKey);
  const certificate = sequence([tbs, algorithm, primitive(asn1.Type.BITSTRING, `\x00${signature.toString('binary')}`)]);
  return new X509Certificate(Buffer.from(asn1.toDer(certificate).getBytes(), 'binary')).toString();
}

/**
 * The AlgorithmIdentifier of a SHA-256 signature by key: ecdsa-with-SHA256 with parameters
 * absent (RFC 5758 3.2), or sha256WithRSAEncryption with NULL parameters (RFC 4055 5) for an
 * RSA CA key from an earlier version.
 */
function signatureAlgorithm(key: KeyObject): Asn1 {
  switch (key.asymmetricKeyType) {
    case 'ec':
      return sequence([oid(OID_ECDSA_WITH_SHA256)]);
    case 'rsa':
      return sequence([oid(OID_SHA256_WITH_RSA), primitive(asn1.Type.NULL, '')]);
    default:
      throw new Error(`the CA key is a ${key.asymmetricKeyType} key, which cannot sign certificates here: create a new local CA (EC P-256)`);
  }
}

/**
 * The subjectKeyIdentifier extension with its value given: without one, forge would hash the
 * (RSA) public key of its draft certificate, which does not exist here.
 */
function subjectKeyIdentifier(keyIdentifier: string): object {
  return { name: 'subjectKeyIdentifier', value: primitive(asn1.Type.OCTETSTRING, keyIdentifier) };
}

/** The fields of a parsed certificate's TBSCertificate that an issuer needs. */
function readTbs(certificate: Asn1): { subject: Asn1; publicKeyInfo: Asn1; extensions: Asn1[] } {
  const fields = childrenOf(child(certificate, 0));
    // version [0] is absent in v1 certificates; then come serial, signature, issuer, validity.
  const subjectIndex = isContextTag(fields[0], 0) ? 5 : 4;
  const extensions = fields.find((field) => isContextTag(field, 3));
  return {
    subject: child(fields, subjectIndex),
    publicKeyInfo: child(fields, subjectIndex + 1),
    extensions: extensions ? childrenOf(child(extensions, 0)) : [],
  };
}

/** The key identifier of a subjectKeyIdentifier extension among extensions, if there is one. */
function subjectKeyIdentifierIn(extensions: Asn1[]): string | undefined {
  for (const extension of extensions) {
    const parts = childrenOf(extension);
    if (asn1.derToOid(bytesOf(child(parts, 0))) !== OID_SUBJECT_KEY_IDENTIFIER) continue;
    // extnValue is the last part (critical may come between); it holds a DER OCTET STRING.
    return bytesOf(parseDer(bytesOf(child(parts, parts.length - 1))));
  }
  return undefined;
}

/**
 * A random positive serial (forge bytes). The first byte is kept in 0x40..0x7f so the DER
 * INTEGER is positive and minimally encoded (no leading zero byte), which strict parsers require.
 */
function randomSerial(): string {
  const bytes = randomBytes(SERIAL_BYTES);
  bytes[0] = (bytes[0] & 0x3f) | 0x40;
  return bytes.toString('binary');
}

/**
 * Splits node's subjectAltName text ("DNS:a, IP Address:1.2.3.4") into [type, value] pairs.
 * Node prints values with special characters as JSON strings, which are decoded here.
 */
function parseSubjectAltName(text: string): Array<[string, string]> {
  const entries: Array<[string, string]> = [];
  let rest = text;
  while (rest.length > 0) {
    const colon = rest.indexOf(':');
    if (colon < 0) break;
    const type = rest.slice(0, colon);
    rest = rest.slice(colon + 1);
    const quoted = /^"(?:[^"\\]|\\.)*"/.exec(rest);
    const end = quoted ? quoted[0].length : rest.indexOf(', ') < 0 ? rest.length : rest.indexOf(', ');
    entries.push([type, quoted ? (JSON.parse(quoted[0]) as string) : rest.slice(0, end)]);
    rest = rest.slice(end).replace(/^, /, '');
  }
  return entries;
}

/** node prints names one attribute per line ("O=x\nCN=y"); operators read them on one line. */
function oneLineName(name: string): string {
  return name.split('\n').filter(Boolean).join(', ');
}
