/**
 * The double's certificates, made with the project's own PKI helpers: a serving CA and a
 * serving certificate for the names clients use to reach an API server (127.0.0.1, ::1,
 * localhost and the in-cluster kubernetes.default.svc names, so tls-server-name works), and a
 * client CA whose certificates authenticate users (CN = user, O = groups) and which also signs
 * for the controller-manager signer stand-in.
 */
import { createCa, issueCertificate, type CertificateAndKey } from '../../lib/pki/certificates.js';

const SERVING_NAMES = ['localhost', 'kubernetes', 'kubernetes.default', 'kubernetes.default.svc', 'kubernetes.default.svc.cluster.local'];
const SERVING_IPS = ['127.0.0.1', '::1', '10.96.0.1'];

export interface DoublePki {
  servingCa: CertificateAndKey;
  serving: CertificateAndKey;
  clientCa: CertificateAndKey;
}

export function createDoublePki(): DoublePki {
  const servingCa = createCa('kube-api-double-ca');
  const serving = issueCertificate(servingCa, { commonName: 'kube-apiserver', usage: 'server', dnsNames: SERVING_NAMES, ips: SERVING_IPS });
  const clientCa = createCa('kube-api-double-client-ca');
  return { servingCa, serving, clientCa };
}

/** A client certificate for a user: CN is the name, one O per group (uid and extra cannot travel in a certificate). */
export function clientCertificate(clientCa: CertificateAndKey, username: string, groups: string[]): { cert: string; key: string } {
  const issued = issueCertificate(clientCa, { commonName: username, organization: groups, usage: 'client' });
  return { cert: issued.certPem, key: issued.keyPem };
}
