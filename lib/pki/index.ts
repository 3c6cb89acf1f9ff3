/**
 * Certificates: where a role's key, certificate and CA bundle come from (TlsSource), and the
 * local PKI that the binaries create when given no certificates.
 */
export * from './tls-source.js';
export * from './local-pki.js';
export { describeCertificate, certificateExpiry, certificateSans, type CertificateSummary, type CertificateSans } from './certificates.js';
