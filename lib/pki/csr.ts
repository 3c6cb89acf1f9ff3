/**
 * Certificate signing requests (PKCS#10, RFC 2986): creating one for a fresh ECDSA P-256
 * key, as the certificate manager does for every renewal, and reading one back with its
 * signature checked, as the approver does before it decides. Assembled around forge's ASN.1
 * (see asn1.ts); node:crypto signs and verifies.
 */
import { createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import forge from 'node-forge';
import {
  GENERAL_NAME, OID, SIGNATURE_HASHES, asn1, bytesOf, child, childrenOf, decodeGeneralNames, decodeName, encodeExtensions, encodeName,
  isContextTag, oid, oidOf, parseDer, primitive, sequence, set, toDer, type Asn1,
} from './asn1.js';
import { normalizeIp } from './certificates.js';

const PEM_LABEL = 'CERTIFICATE REQUEST';
const EC_CURVE = 'prime256v1';
const SAN_TYPE_DNS = 2;
const SAN_TYPE_IP = 7;

export interface CsrSubject {
  commonName: string;
  /** Subject O entries; Kubernetes reads them as groups. */
  organization?: string[];
  dnsNames?: string[];
  ips?: string[];
}

export interface NewCsr {
  csrPem: string;
  /** The private key the request is for (PKCS#8 PEM); it never leaves the requester. */
  keyPem: string;
}

/** A request as read back: what it asks for, and for which key. */
export interface ParsedCsr {
  commonName?: string;
  /** Subject O entries, in order. */
  organization: string[];
  /** Subject attributes other than CN and O, as OIDs (an approver refuses what it does not expect). */
  otherSubjectAttributes: string[];
  dnsNames: string[];
  ips: string[];
  emails: string[];
  uris: string[];
  /** OIDs of the extensions requested besides subjectAltName. */
  otherExtensions: string[];
  publicKey: { type: string; curve?: string; bits?: number };
  /** The SubjectPublicKeyInfo, DER: what the certificate will be issued for. */
  publicKeyInfoDer: Buffer;
}

/** Creates a request for a fresh ECDSA P-256 key (as client-go's certificate manager does). */
export function createCsr(subject: CsrSubject): NewCsr {
  if (subject.commonName.trim() === '') throw new Error('a certificate request needs a non-empty common name (CN)');
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: EC_CURVE });
  const altNames = [
    ...(subject.dnsNames ?? []).map((value) => ({ type: SAN_TYPE_DNS, value })),
    ...(subject.ips ?? []).map((ip) => ({ type: SAN_TYPE_IP, ip: normalizeIp(ip) })),
  ];
  const attributes = altNames.length === 0 ? [] : [sequence([
    oid(OID.extensionRequest),
    // The [3] EXPLICIT wrapper forge puts around certificate extensions is not part of a request.
    set([child(encodeExtensions([{ name: 'subjectAltName', altNames }]), 0)]),
  ])];
  const info = sequence([
    primitive(asn1.Type.INTEGER, asn1.integerToDer(0).getBytes()),
    encodeName([
      ...(subject.organization ?? []).map((value) => ({ name: 'organizationName', value })),
      { name: 'commonName', value: subject.commonName },
    ]),
    parseDer(publicKey.export({ type: 'spki', format: 'der' }).toString('binary')),
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, attributes),
  ]);
  const signature = sign('sha256', toDer(info), privateKey);
  const request = sequence([info, sequence([oid(OID.ecdsaWithSha256)]), primitive(asn1.Type.BITSTRING, `\x00${signature.toString('binary')}`)]);
  return {
    csrPem: forge.pem.encode({ type: PEM_LABEL, body: asn1.toDer(request).getBytes() }),
    keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
  };
}

/**
 * Reads a PEM request and checks its signature with the key it carries. Throws an error that
 * says what is wrong with it (not PEM, not a request, a signature that does not verify).
 */
export function parseCsr(pem: string | Buffer): ParsedCsr {
  const der = pemBody(pem.toString());
  let request: Asn1;
  try {
    request = parseDer(der);
  } catch (err) {
    throw new Error(`the certificate request is not valid DER: ${(err as Error).message}`, { cause: err });
  }
  try {
    const info = child(request, 0);
    const publicKeyInfoDer = toDer(child(info, 2));
    const key = publicKeyOf(publicKeyInfoDer);
    checkSignature(info, child(request, 1), child(request, 2), key);
    const parsed: ParsedCsr = {
      organization: [], otherSubjectAttributes: [], dnsNames: [], ips: [], emails: [], uris: [], otherExtensions: [],
      publicKey: describeKey(key), publicKeyInfoDer,
    };
    for (const [type, value] of decodeName(child(info, 1))) {
      if (type === OID.commonName && parsed.commonName === undefined) parsed.commonName = value;
      else if (type === OID.organizationName) parsed.organization.push(value);
      else parsed.otherSubjectAttributes.push(type);
    }
    const attributes = childrenOf(info)[3];
    if (attributes && isContextTag(attributes, 0)) readAttributes(attributes, parsed);
    return parsed;
  } catch (err) {
    if (err instanceof CsrSignatureError) throw err;
    throw new Error(`the certificate request is malformed: ${(err as Error).message}`, { cause: err });
  }
}

/** The signature does not verify with the request's own key. */
export class CsrSignatureError extends Error {}

function pemBody(text: string): string {
  let messages: forge.pem.ObjectPEM[];
  try {
    messages = forge.pem.decode(text);
  } catch (err) {
    throw new Error(`the certificate request is not PEM: ${(err as Error).message}`, { cause: err });
  }
  const request = messages.find((m) => m.type === PEM_LABEL);
  if (!request) throw new Error(`the PEM holds no "${PEM_LABEL}" block${messages.length ? ` (found ${messages.map((m) => `"${m.type}"`).join(', ')})` : ''}`);
  return request.body;
}

function publicKeyOf(spki: Buffer): KeyObject {
  try {
    return createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch (err) {
    throw new Error(`its public key cannot be read: ${(err as Error).message}`, { cause: err });
  }
}

function describeKey(key: KeyObject): ParsedCsr['publicKey'] {
  const details = key.asymmetricKeyDetails ?? {};
  return { type: key.asymmetricKeyType ?? 'unknown', curve: details.namedCurve, bits: details.modulusLength };
}

function checkSignature(info: Asn1, algorithm: Asn1, signature: Asn1, key: KeyObject): void {
  const algorithmOid = oidOf(child(algorithm, 0));
  const hash = SIGNATURE_HASHES[algorithmOid];
  if (!hash) throw new CsrSignatureError(`the certificate request is signed with algorithm ${algorithmOid}, which is not accepted: sign with ECDSA or RSA and SHA-256, SHA-384 or SHA-512`);
  const bits = Buffer.from(bytesOf(signature), 'binary');
  if (bits[0] !== 0) throw new CsrSignatureError('the certificate request\'s signature is not a whole number of bytes');
  if (!verify(hash, toDer(info), key, bits.subarray(1))) throw new CsrSignatureError('the certificate request\'s signature does not verify with the public key it carries');
}

/** Reads the extensionRequest attribute; any other attribute (a challenge password...) is kept as an "extension" to refuse. */
function readAttributes(attributes: Asn1, parsed: ParsedCsr): void {
  for (const attribute of childrenOf(attributes)) {
    const type = oidOf(child(attribute, 0));
    if (type !== OID.extensionRequest) {
      parsed.otherExtensions.push(type);
      continue;
    }
    for (const extensions of childrenOf(child(attribute, 1))) {
      for (const extension of childrenOf(extensions)) {
        const parts = childrenOf(extension);
        const extensionOid = oidOf(child(parts, 0));
        if (extensionOid !== OID.subjectAltName) {
          parsed.otherExtensions.push(extensionOid);
          continue;
        }
        const names = parseDer(bytesOf(child(parts, parts.length - 1)));
        for (const { tag, value } of decodeGeneralNames(names)) {
          if (tag === GENERAL_NAME.dns) parsed.dnsNames.push(value);
          else if (tag === GENERAL_NAME.ip) parsed.ips.push(normalizeIp(value));
          else if (tag === GENERAL_NAME.rfc822) parsed.emails.push(value);
          else if (tag === GENERAL_NAME.uri) parsed.uris.push(value);
          else parsed.otherExtensions.push(`${OID.subjectAltName}[${tag}]`);
        }
      }
    }
  }
}
