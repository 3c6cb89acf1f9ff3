/**
 * Pure certificate functions for the local PKI: create a CA, issue leaf certificates from it,
 * and read back what a certificate says. node:crypto generates the RSA keys (native, fast);
 * node-forge builds and signs the X.509 structures, which node:crypto cannot do. Reading goes
 * through node:crypto's X509Certificate so it also works for non-RSA certificates that come
 * from elsewhere (e.g. the Kubernetes CSR API).
 */
import { generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { isIP, SocketAddress } from 'node:net';
import forge from 'node-forge';

const RSA_MODULUS_BITS = 2048;
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
  const { keyPem, privateKey } = generateRsaKey();
  const cert = newCertificate(privateKey, days);
  const subject = [{ name: 'commonName', value: commonName }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(privateKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem };
}

/** Issues a leaf certificate with a fresh key, signed by ca. */
export function issueCertificate(ca: CertificateAndKey, request: LeafRequest): CertificateAndKey {
  requireCommonName(request.commonName);
  const dnsNames = (request.dnsNames ?? []).map(checkDnsName);
  const ips = (request.ips ?? []).map(normalizeIp);
  const caCert = forge.pki.certificateFromPem(ca.certPem);
  const caKey = forge.pki.privateKeyFromPem(ca.keyPem);
  const { keyPem, privateKey } = generateRsaKey();
  const cert = newCertificate(privateKey, request.days ?? DEFAULT_LEAF_DAYS);
  cert.setSubject([
    ...(request.organization ?? []).map((value) => ({ name: 'organizationName', value })),
    { name: 'commonName', value: request.commonName },
  ]);
  cert.setIssuer(caCert.subject.attributes);
  const altNames = [
    ...dnsNames.map((value) => ({ type: SAN_TYPE_DNS, value })),
    ...ips.map((ip) => ({ type: SAN_TYPE_IP, ip })),
  ];
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: request.usage !== 'client', clientAuth: request.usage !== 'server' },
    ...(altNames.length > 0 ? [{ name: 'subjectAltName', altNames }] : []),
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: keyIdentifierOf(caCert) },
  ]);
  cert.sign(caKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem };
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

function generateRsaKey(): { keyPem: string; privateKey: forge.pki.rsa.PrivateKey } {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: RSA_MODULUS_BITS });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  return { keyPem, privateKey: forge.pki.privateKeyFromPem(keyPem) };
}

/** A certificate for privateKey with a random serial and a validity of days from now (backdated). */
function newCertificate(privateKey: forge.pki.rsa.PrivateKey, days: number): forge.pki.Certificate {
  if (!Number.isInteger(days) || days <= 0) throw new Error(`certificate validity must be a whole number of days > 0, got ${days}`);
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.setRsaPublicKey(privateKey.n, privateKey.e);
  cert.serialNumber = randomSerial();
  const now = Date.now();
  cert.validity.notBefore = new Date(now - BACKDATE_MS);
  cert.validity.notAfter = new Date(now + days * DAY_MS);
  return cert;
}

/**
 * A random positive serial in hex. The first byte is kept in 0x40..0x7f so the DER INTEGER
 * is positive and minimally encoded (no leading zero byte), which strict parsers require.
 */
function randomSerial(): string {
  const bytes = randomBytes(SERIAL_BYTES);
  bytes[0] = (bytes[0]! & 0x3f) | 0x40;
  return bytes.toString('hex');
}

/** The CA's own subjectKeyIdentifier, so authorityKeyIdentifier matches it exactly. */
function keyIdentifierOf(caCert: forge.pki.Certificate): string {
  const ext = caCert.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier?: string } | undefined;
  return ext?.subjectKeyIdentifier
    ? forge.util.hexToBytes(ext.subjectKeyIdentifier)
    : caCert.generateSubjectKeyIdentifier().getBytes();
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
