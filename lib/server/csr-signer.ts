/**
 * The tunnel server's approver and signer. It follows the certificate signing requests of
 * its signers (and, when agents use kubernetes.io/kube-apiserver-client, that signer's) and
 * for each one that is not settled yet:
 *
 * - not approved or denied: reviews it against the policy (csr-policy.ts), then approves it
 *   (reason AutoApproved) or denies it with the rule it broke, through `/approval`;
 * - approved by anyone (this approver, or an administrator's `kubectl certificate approve`)
 *   and one of our signers: checks the request again (all but the requester rule) and signs
 *   it with the tunnel CA through `/status`, or marks it Failed (SignerValidationFailure).
 *
 * Several server replicas may run it at once: a replica that loses a race (409 Conflict)
 * reads the request again and finds it settled. Events are handled one at a time.
 */
import { CertificatesV1Api, type V1CertificateSigningRequest, type V1CertificateSigningRequestCondition } from '@kubernetes/client-node';
import { concatMap, from, merge, type Subscription } from 'rxjs';
import { signCertificate, type CertificateAndKey } from '../pki/certificates.js';
import { certificateSerial } from '../pki/certificates.js';
import type { Logger } from '../observe/log.js';
import type { MetricsRegistry } from '../observe/metrics.js';
import { KubeApiError, kubeCall } from '../kube/api-errors.js';
import type { KubeConnection } from '../kube/kube-config.js';
import { listWatch } from '../kube/list-watch.js';
import { KUBE_APISERVER_CLIENT_SIGNER, denialReason, reviewCsr, type CsrPolicy } from './csr-policy.js';

export interface CsrSignerOptions {
  kube: KubeConnection;
  policy: CsrPolicy;
  ca: CertificateAndKey;
  /** The longest lifetime it issues, whatever a request asks for. */
  maxLifetimeSeconds: number;
  metrics?: MetricsRegistry;
  log: Logger;
}

export class CsrSigner {
  private subscription?: Subscription;
  private readonly csrs: CertificatesV1Api;
  private readonly decisions;

  constructor(private readonly o: CsrSignerOptions) {
    this.csrs = o.kube.config.makeApiClient(CertificatesV1Api);
    this.decisions = o.metrics?.counter('certificate_signing_requests_total', 'Certificate signing requests the approver and signer settled, by signer and outcome (approved, denied, signed, failed).');
  }

  start(): void {
    const signers = [...new Set([this.o.policy.signers.server, this.o.policy.signers.agent])];
    const events = signers.map((signer) => listWatch<V1CertificateSigningRequest>({
      config: this.o.kube.config,
      server: this.o.kube.server,
      path: '/apis/certificates.k8s.io/v1/certificatesigningrequests',
      resource: { resource: 'certificatesigningrequests', group: 'certificates.k8s.io' },
      fieldSelector: `spec.signerName=${signer}`,
      list: () => this.csrs.listCertificateSigningRequest({ fieldSelector: `spec.signerName=${signer}` }),
      log: this.o.log,
    }));
    this.subscription = merge(...events).pipe(
      concatMap((event) => from(event.type === 'DELETED' ? Promise.resolve() : this.settle(event.object))),
    ).subscribe();
    this.o.log.info('approving and signing certificate requests', { signers: signers.join(',') });
  }

  stop(): void {
    this.subscription?.unsubscribe();
  }

  private async settle(csr: V1CertificateSigningRequest, attempt = 0): Promise<void> {
    const name = csr.metadata?.name ?? '';
    try {
      if (csr.status?.certificate || has(csr, 'Denied') || has(csr, 'Failed')) return;
      if (!has(csr, 'Approved')) await this.review(csr);
      else if (csr.spec?.signerName !== KUBE_APISERVER_CLIENT_SIGNER) await this.sign(csr);
    } catch (err) {
      if (err instanceof KubeApiError && err.code === 409 && attempt < 3) {
        // Changed meanwhile (another replica, an administrator): look at it as it is now.
        const fresh = await this.csrs.readCertificateSigningRequest({ name }).catch(() => undefined);
        if (fresh) await this.settle(fresh, attempt + 1);
        return;
      }
      this.o.log.warn('cannot settle a certificate signing request', { csr: name, reason: (err as Error).message });
    }
  }

  private async review(csr: V1CertificateSigningRequest): Promise<void> {
    const name = csr.metadata!.name!;
    const review = reviewCsr(csr, this.o.policy);
    if (review.decision === 'ignore') return;
    const condition: V1CertificateSigningRequestCondition = review.decision === 'approve'
      ? { type: 'Approved', status: 'True', reason: 'AutoApproved', message: `Approved by the tunnel server: a ${review.role} certificate request that meets its policy.` }
      : { type: 'Denied', status: 'True', reason: denialReason(review.rule), message: `Denied by the tunnel server, rule ${review.rule}: ${review.message}` };
    const body: V1CertificateSigningRequest = { ...csr, status: { ...csr.status, conditions: [...(csr.status?.conditions ?? []), condition] } };
    // The approval comes back as a watch event, which the signing follows.
    await kubeCall({ verb: 'update', resource: 'certificatesigningrequests/approval', group: 'certificates.k8s.io', name }, this.o.kube.server,
      () => this.csrs.replaceCertificateSigningRequestApproval({ name, body }));
    this.decisions?.inc({ signer: csr.spec?.signerName ?? '', outcome: review.decision === 'approve' ? 'approved' : 'denied' });
    if (review.decision === 'approve') {
      this.o.log.info('approved a certificate request', { csr: name, role: review.role, requester: csr.spec?.username, subject: `CN=${review.csr.commonName}` });
    } else {
      this.o.log.warn('denied a certificate request', { csr: name, requester: csr.spec?.username, rule: review.rule, reason: review.message });
    }
  }

  private async sign(csr: V1CertificateSigningRequest): Promise<void> {
    const name = csr.metadata!.name!;
    const review = reviewCsr(csr, this.o.policy, { checkRequester: false });
    if (review.decision === 'ignore') return;
    let status: V1CertificateSigningRequest['status'];
    if (review.decision === 'deny') {
      status = { ...csr.status, conditions: [...(csr.status?.conditions ?? []), { type: 'Failed', status: 'True', reason: 'SignerValidationFailure', message: `rule ${review.rule}: ${review.message}` }] };
    } else {
      const lifetimeSeconds = Math.min(csr.spec?.expirationSeconds ?? this.o.maxLifetimeSeconds, this.o.maxLifetimeSeconds);
      const certPem = signCertificate(this.o.ca, {
        commonName: review.csr.commonName!,
        organization: review.csr.organization,
        dnsNames: review.csr.dnsNames,
        ips: review.csr.ips,
        usage: review.role === 'server' ? 'server' : 'client',
        lifetimeSeconds,
      }, review.csr.publicKeyInfoDer);
      status = { ...csr.status, certificate: Buffer.from(certPem).toString('base64') };
      this.o.log.info('signed a certificate', { csr: name, role: review.role, serial: certificateSerial(certPem), lifetimeSeconds });
    }
    await kubeCall({ verb: 'update', resource: 'certificatesigningrequests/status', group: 'certificates.k8s.io', name }, this.o.kube.server,
      () => this.csrs.replaceCertificateSigningRequestStatus({ name, body: { ...csr, status } }));
    this.decisions?.inc({ signer: csr.spec?.signerName ?? '', outcome: review.decision === 'deny' ? 'failed' : 'signed' });
    if (review.decision === 'deny') this.o.log.warn('refused to sign an approved certificate request', { csr: name, rule: review.rule, reason: review.message });
  }
}

function has(csr: V1CertificateSigningRequest, type: string): boolean {
  return (csr.status?.conditions ?? []).some((c) => c.type === type && c.status === 'True');
}
