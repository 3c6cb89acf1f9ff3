/**
 * What the tunnel server's approver approves: a certificate signing request for one of its
 * signers is approved only when every rule holds, and denied with the first rule it breaks,
 * named in the condition's reason (`Denied<Rule>`) and explained in its message. Requests
 * for other signers are none of its business and are left alone, with one exception: when
 * agents are configured to use kubernetes.io/kube-apiserver-client, requests of that signer
 * whose subject claims the agents' organization are held to the agent rules too.
 *
 * The rules, for both roles: the request parses and its signature verifies; its subject has
 * exactly the role's O and a CN of the role's form, and nothing else; its usages are exactly
 * the role's; it asks for no extension but subjectAltName; its key is ECDSA P-256/P-384 or
 * RSA of 2048 bits or more; `expirationSeconds` is within the bound; and it comes from the
 * role's requester: the server's own service account, or for an agent the bootstrap account
 * of the cluster its CN names (or, renewing with a kube-apiserver-client certificate, that
 * agent itself). The server may ask for SANs from its allow-list only; an agent for none.
 */
import type { V1CertificateSigningRequest } from '@kubernetes/client-node';
import { parseCsr, type ParsedCsr } from '../pki/csr.js';
import {
  AGENT_ORGANIZATION, SERVER_COMMON_NAME, SERVER_ORGANIZATION, agentCommonName, clusterOfAgent,
} from '../pki/identities.js';
import { normalizeIp } from '../pki/certificates.js';

export const SERVER_USAGES = ['digital signature', 'server auth'];
export const AGENT_USAGES = ['digital signature', 'client auth'];
export const KUBE_APISERVER_CLIENT_SIGNER = 'kubernetes.io/kube-apiserver-client';
/** Certificates of a year at most, as kube-controller-manager's default signing duration. */
export const DEFAULT_MAX_EXPIRATION_SECONDS = 365 * 86_400;

export interface SignerNames {
  server: string;
  agent: string;
}

export interface CsrPolicy {
  signers: SignerNames;
  /** Who may request the server's certificate (its service account's username). */
  serverRequesters: string[];
  /** The SANs the server's certificate may hold (DNS names and IPs, checked exactly). */
  serverSans(): { dnsNames: string[]; ips: string[] };
  /** Who may request the certificate of `cluster`'s agent first: its bootstrap identity. */
  agentRequester(cluster: string): string;
  maxExpirationSeconds: number;
}

export type Review =
  | { decision: 'approve'; role: 'server' | 'agent'; csr: ParsedCsr }
  | { decision: 'deny'; rule: string; message: string }
  /** Not a request for one of our signers. */
  | { decision: 'ignore' };

/** Condition reason for a request denied by `rule`: Denied plus the rule in CamelCase. */
export function denialReason(rule: string): string {
  return `Denied${rule.replace(/(^|-)([a-z])/g, (_, __: string, c: string) => c.toUpperCase())}`;
}

export function reviewCsr(object: V1CertificateSigningRequest, policy: CsrPolicy, options: { checkRequester?: boolean } = {}): Review {
  const spec = object.spec;
  const signer = spec?.signerName;
  let role: 'server' | 'agent';
  if (signer === policy.signers.server) role = 'server';
  else if (signer === policy.signers.agent) role = 'agent';
  else return { decision: 'ignore' };
  const deny = (rule: string, message: string): Review => ({ decision: 'deny', rule, message });

  let csr: ParsedCsr;
  try {
    csr = parseCsr(Buffer.from(spec?.request ?? '', 'base64').toString('utf8'));
  } catch (err) {
    return deny('request', (err as Error).message);
  }
  // A kube-apiserver-client request is ours only if it claims to be an agent's.
  if (signer === KUBE_APISERVER_CLIENT_SIGNER && signer !== policy.signers.server && !csr.organization.includes(AGENT_ORGANIZATION)) return { decision: 'ignore' };

  const organization = role === 'server' ? SERVER_ORGANIZATION : AGENT_ORGANIZATION;
  if (csr.organization.length !== 1 || csr.organization[0] !== organization) {
    return deny('organization', `a ${role} certificate's subject must have exactly O=${organization}, not ${csr.organization.map((o) => `O=${o}`).join(', ') || 'none'}`);
  }
  const cluster = role === 'agent' ? clusterOfAgent(csr.commonName ?? '') : undefined;
  if (role === 'server' && csr.commonName !== SERVER_COMMON_NAME) return deny('common-name', `the server's CN must be ${SERVER_COMMON_NAME}, not "${csr.commonName ?? ''}"`);
  if (role === 'agent' && (!cluster || !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(cluster))) {
    return deny('common-name', `an agent's CN must be ${agentCommonName('<cluster>')} with a DNS-label cluster name, not "${csr.commonName ?? ''}"`);
  }
  if (csr.otherSubjectAttributes.length > 0) return deny('subject', `the subject may hold only CN and O, not attributes ${csr.otherSubjectAttributes.join(', ')}`);

  const usages = [...(spec?.usages ?? [])].sort();
  const wanted = (role === 'server' ? SERVER_USAGES : AGENT_USAGES).slice().sort();
  if (usages.join(',') !== wanted.join(',')) return deny('usages', `a ${role} certificate's usages must be exactly ${wanted.join(', ')}, not ${usages.join(', ') || 'none'}`);
  if (csr.otherExtensions.length > 0) return deny('extensions', `only a subjectAltName extension may be requested, not ${csr.otherExtensions.join(', ')}`);

  const sans = [...csr.dnsNames.map((d) => `DNS:${d}`), ...csr.ips.map((ip) => `IP:${ip}`), ...csr.emails.map((e) => `email:${e}`), ...csr.uris.map((u) => `URI:${u}`)];
  if (role === 'agent' && sans.length > 0) return deny('subject-alt-names', `an agent certificate may hold no SANs, not ${sans.join(', ')}`);
  if (role === 'server') {
    const allowed = policy.serverSans();
    const ips = new Set(allowed.ips.map(normalizeIp));
    const outside = [
      ...csr.dnsNames.filter((d) => !allowed.dnsNames.includes(d)).map((d) => `DNS:${d}`),
      ...csr.ips.filter((ip) => !ips.has(ip)).map((ip) => `IP:${ip}`),
      ...csr.emails.map((e) => `email:${e}`),
      ...csr.uris.map((u) => `URI:${u}`),
    ];
    if (outside.length > 0) return deny('subject-alt-names', `${outside.join(', ')} ${outside.length === 1 ? 'is' : 'are'} not among the server's names (${[...allowed.dnsNames, ...allowed.ips].join(', ') || 'none'}); add ${outside.length === 1 ? 'it' : 'them'} with --cert-dns-names / --cert-ips`);
  }

  const key = csr.publicKey;
  const keyOk = (key.type === 'ec' && (key.curve === 'prime256v1' || key.curve === 'secp384r1')) || (key.type === 'rsa' && (key.bits ?? 0) >= 2048);
  if (!keyOk) return deny('key', `the key must be ECDSA P-256 or P-384, or RSA of at least 2048 bits, not ${key.type}${key.curve ? ` ${key.curve}` : ''}${key.bits ? ` ${key.bits}` : ''}`);

  const expiration = spec?.expirationSeconds;
  if (expiration !== undefined && expiration > policy.maxExpirationSeconds) {
    return deny('expiration', `expirationSeconds ${expiration} is over the limit of ${policy.maxExpirationSeconds}`);
  }

  if (options.checkRequester !== false) {
    const user = spec?.username ?? '';
    const allowed = role === 'server' ? policy.serverRequesters : [policy.agentRequester(cluster!), agentCommonName(cluster!)];
    if (!allowed.includes(user)) {
      return deny('requester', `${user || 'an unknown user'} may not request ${role === 'server' ? 'the server\'s certificate' : `the certificate of cluster "${cluster}"'s agent`}: only ${allowed.join(' or ')} may`);
    }
  }
  return { decision: 'approve', role, csr };
}
