/**
 * A role's certificate from the Kubernetes CSR API, kept current: a TlsSource whose key and
 * certificate come from certificates.k8s.io/v1 CertificateSigningRequests, as client-go's
 * certificate manager does it for the kubelet.
 *
 * - At start, a stored certificate (<cert-dir>/<prefix>-current.pem) that is still valid and
 *   says what the template asks for is used again; otherwise one is requested at once.
 * - Every request has a new ECDSA P-256 key and asks for `expirationSeconds`; the manager
 *   waits for the issued certificate by watch, for `waitTimeoutMs` at most.
 * - It renews at a uniformly random 70 to 90% of the certificate's lifetime, and at once
 *   when the template (subject, SANs) changes to something the certificate does not hold.
 * - A request that is denied, fails or gets no answer is retried with back-off (2 s,
 *   doubling, with jitter, capped), with the reason in the log and in
 *   `certificate_requests_total{result}`; the certificate in hand is used until it expires.
 *
 * The schedule is an RxJS pipeline: the template and the current pair select a deadline
 * (switchMap), the deadline starts a request that retries with delay, and each new pair
 * replaces the current one, which selects the next deadline.
 */
import { X509Certificate, createPrivateKey, randomInt } from 'node:crypto';
import { CertificatesV1Api, type V1CertificateSigningRequest } from '@kubernetes/client-node';
import {
  BehaviorSubject, Observable, Subject, combineLatest, defer, filter, firstValueFrom, map, merge, retry, skip, switchMap, take, tap, timeout, timer, from,
  type Subscription,
} from 'rxjs';
import { createCsr } from '../pki/csr.js';
import { certificateSans, certificateSerial } from '../pki/certificates.js';
import type { CertificateStore, StoredPair } from '../pki/certificate-store.js';
import type { CaBundleSource, TlsMaterial, TlsSource } from '../pki/tls-source.js';
import { Backoff, type BackoffOptions } from '../common/backoff.js';
import type { Logger } from '../observe/log.js';
import type { MetricsRegistry } from '../observe/metrics.js';
import { kubeCall } from './api-errors.js';
import type { KubeConnection } from './kube-config.js';
import { listWatch } from './list-watch.js';

/** What a certificate must say, and how to ask for it. */
export interface CertificateTemplate {
  commonName: string;
  organization: string[];
  dnsNames: string[];
  ips: string[];
  /** CSR spec.usages, e.g. ['digital signature', 'client auth']. */
  usages: string[];
  signerName: string;
  /** spec.expirationSeconds (at least 600); the signer may issue shorter. */
  expirationSeconds?: number;
}

export interface CertificateManagerOptions {
  /** Names the role in logs and metrics, e.g. `tunnel-server`. */
  role: string;
  kube: KubeConnection;
  /** The wanted certificate; a new value that the current certificate does not satisfy renews it at once. */
  template: Observable<CertificateTemplate>;
  /** The CAs the role trusts (the `ca` of its TlsMaterial). */
  trust: CaBundleSource;
  store: CertificateStore;
  /** CSR names are generated from this prefix. */
  csrPrefix: string;
  /** How long one request waits for its certificate (client-go: 15 minutes). */
  waitTimeoutMs?: number;
  /** Between failed requests: 2 s, doubling, 10% jitter, at most 32 s, by default. */
  backoff?: BackoffOptions;
  /** Fraction of the lifetime after which to renew; uniform in [0.7, 0.9] by default. */
  renewFraction?: () => number;
  metrics?: MetricsRegistry;
  log: Logger;
}

const DEFAULT_WAIT_TIMEOUT_MS = 15 * 60_000;
const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 2_000, factor: 2, maxMs: 32_000, jitter: 0.1 };

/** Why a request did not bring a certificate; the result label of certificate_requests_total. */
class RequestFailure extends Error {
  constructor(message: string, readonly result: 'denied' | 'failed' | 'timeout' | 'error', options?: { cause?: unknown }) {
    super(message, options);
  }
}

export class KubeCertificateManager implements TlsSource {
  readonly changes: Observable<TlsMaterial>;

  private readonly pair = new BehaviorSubject<StoredPair | undefined>(undefined);
  private readonly closed = new Subject<void>();
  private readonly deadlines = new WeakMap<StoredPair, number>();
  private readonly csrs: CertificatesV1Api;
  private readonly requests;
  private subscription?: Subscription;
  private expiry?: Subscription;

  private constructor(private readonly o: CertificateManagerOptions) {
    this.csrs = o.kube.config.makeApiClient(CertificatesV1Api);
    this.changes = merge(this.pair.pipe(skip(1), filter((p) => p !== undefined)), o.trust.changes).pipe(map(() => this.current()));
    this.requests = o.metrics?.counter('certificate_requests_total', 'Certificate signing requests by role and result (issued, denied, failed, timeout, error).');
    o.metrics?.gauge('certificate_expiration_timestamp_seconds', 'When the role\'s certificate expires (Unix time).', () => (this.pair.value?.notAfter.getTime() ?? 0) / 1000);
  }

  /**
   * Loads a stored certificate or requests one, and keeps it renewed; resolves once the role
   * has a certificate (however long the API server takes: the role cannot start without one).
   */
  static async start(o: CertificateManagerOptions): Promise<KubeCertificateManager> {
    const manager = new KubeCertificateManager(o);
    const first = await firstValueFrom(o.template);
    const stored = await o.store.load();
    if ('unusable' in stored) {
      o.log.info('requesting a certificate', { role: o.role, reason: stored.unusable });
    } else if (!satisfies(stored, first)) {
      o.log.info('requesting a certificate', { role: o.role, reason: `the stored certificate ${stored.path} does not hold what is wanted (${describeTemplate(first)})` });
    } else {
      o.log.info('using the stored certificate', { role: o.role, path: stored.path, serial: certificateSerial(stored.certPem), notAfter: stored.notAfter.toISOString() });
      manager.adopt(stored);
    }
    manager.run();
    await firstValueFrom(manager.pair.pipe(filter((p) => p !== undefined), take(1)));
    return manager;
  }

  current(): TlsMaterial {
    const pair = this.pair.value;
    if (!pair) throw new Error(`${this.o.role} has no certificate yet`);
    return { key: Buffer.from(pair.keyPem), cert: Buffer.from(pair.certPem), ca: this.o.trust.current() };
  }

  /** When the current certificate will be renewed (Unix ms), for logs and tests. */
  get renewsAt(): number | undefined {
    const pair = this.pair.value;
    return pair && this.deadline(pair);
  }

  close(): void {
    this.subscription?.unsubscribe();
    this.expiry?.unsubscribe();
    this.closed.next();
    this.pair.complete();
  }

  private run(): void {
    this.subscription = combineLatest([this.o.template, this.pair]).pipe(
      switchMap(([template, pair]) => {
        const due = pair && satisfies(pair, template) ? this.deadline(pair) - Date.now() : 0;
        if (pair && due > 0) this.o.log.info('certificate renewal scheduled', { role: this.o.role, serial: certificateSerial(pair.certPem), at: new Date(this.deadline(pair)).toISOString() });
        return delay(due).pipe(switchMap(() => this.requestWithRetry(template)));
      }),
    ).subscribe({
      next: (stored) => this.adopt(stored),
      error: (err: unknown) => this.o.log.error('certificate renewal stopped', { role: this.o.role, reason: (err as Error).message }),
    });
  }

  private adopt(stored: StoredPair): void {
    this.expiry?.unsubscribe();
    this.expiry = delay(stored.notAfter.getTime() - Date.now()).subscribe(() => {
      this.o.log.error('the certificate has expired and could not be renewed; peers refuse it until a new one is issued', { role: this.o.role, serial: certificateSerial(stored.certPem) });
    });
    this.pair.next(stored);
  }

  /** Requests until one succeeds; each failure waits longer, and says why. */
  private requestWithRetry(template: CertificateTemplate): Observable<StoredPair> {
    const backoff = new Backoff({ ...DEFAULT_BACKOFF, ...this.o.backoff });
    return defer(() => this.requestOnce(template)).pipe(
      tap(() => backoff.reset()),
      retry({
        delay: (err: RequestFailure) => {
          const ms = backoff.next();
          this.requests?.inc({ role: this.o.role, result: err.result ?? 'error' });
          this.o.log.warn('certificate request failed; retrying', { role: this.o.role, in: `${ms}ms`, reason: err.message });
          return timer(ms);
        },
      }),
    );
  }

  /** One request: a new key, a CSR, its answer, the certificate stored. */
  private requestOnce(template: CertificateTemplate): Observable<StoredPair> {
    return defer(async () => {
      const { csrPem, keyPem } = createCsr(template);
      const body: V1CertificateSigningRequest = {
        apiVersion: 'certificates.k8s.io/v1',
        kind: 'CertificateSigningRequest',
        metadata: { generateName: `${this.o.csrPrefix}-` },
        spec: {
          request: Buffer.from(csrPem).toString('base64'),
          signerName: template.signerName,
          usages: template.usages,
          ...(template.expirationSeconds ? { expirationSeconds: template.expirationSeconds } : {}),
        },
      };
      const created = await kubeCall({ verb: 'create', resource: 'certificatesigningrequests', group: 'certificates.k8s.io' }, this.o.kube.server,
        () => this.csrs.createCertificateSigningRequest({ body }));
      const name = created.metadata!.name!;
      this.o.log.info('certificate signing request created', { role: this.o.role, csr: name, signer: template.signerName, subject: describeTemplate(template) });
      return { name, uid: created.metadata?.uid, keyPem };
    }).pipe(
      switchMap(({ name, uid, keyPem }) => this.answerTo(name, uid).pipe(
        switchMap((certPem) => from(this.store(name, certPem, keyPem, template))),
      )),
    );
  }

  /** The issued certificate of CSR `name`, by watch; Denied, Failed, deletion or silence fail it. */
  private answerTo(name: string, uid: string | undefined): Observable<string> {
    const waitMs = this.o.waitTimeoutMs ?? DEFAULT_WAIT_TIMEOUT_MS;
    return listWatch<V1CertificateSigningRequest>({
      config: this.o.kube.config,
      server: this.o.kube.server,
      path: '/apis/certificates.k8s.io/v1/certificatesigningrequests',
      resource: { resource: 'certificatesigningrequests', group: 'certificates.k8s.io' },
      fieldSelector: `metadata.name=${name}`,
      list: () => this.csrs.listCertificateSigningRequest({ fieldSelector: `metadata.name=${name}` }),
      log: this.o.log,
    }).pipe(
      map(({ type, object }) => {
        if (type === 'DELETED' || (uid && object.metadata?.uid !== uid)) throw new RequestFailure(`certificate signing request ${name} was deleted before it was answered`, 'error');
        const conditions = object.status?.conditions ?? [];
        const verdict = conditions.find((c) => (c.type === 'Denied' || c.type === 'Failed') && c.status === 'True');
        if (verdict) {
          throw new RequestFailure(`certificate signing request ${name} was ${verdict.type === 'Denied' ? 'denied' : 'failed'}: ${verdict.reason ?? 'no reason'}${verdict.message ? ` (${verdict.message})` : ''}`,
            verdict.type === 'Denied' ? 'denied' : 'failed');
        }
        const approved = conditions.some((c) => c.type === 'Approved' && c.status === 'True');
        return approved && object.status?.certificate ? Buffer.from(object.status.certificate, 'base64').toString('utf8') : undefined;
      }),
      filter((certPem): certPem is string => certPem !== undefined),
      take(1),
      timeout({ first: waitMs, with: () => { throw new RequestFailure(`certificate signing request ${name} got no certificate within ${Math.round(waitMs / 1000)} s: is the approver (the tunnel server's signer, or kube-controller-manager's) running?`, 'timeout'); } }),
    );
  }

  /** Checks the issued certificate against the request and stores it. */
  private async store(name: string, certPem: string, keyPem: string, template: CertificateTemplate): Promise<StoredPair> {
    let leaf: X509Certificate;
    try {
      leaf = new X509Certificate(certPem);
    } catch (err) {
      throw new RequestFailure(`certificate signing request ${name} was answered with something that is not a PEM certificate: ${(err as Error).message}`, 'failed', { cause: err });
    }
    if (!leaf.checkPrivateKey(createPrivateKey(keyPem))) throw new RequestFailure(`the certificate issued for ${name} is not for the key it was requested with`, 'failed');
    if (new Date(leaf.validTo).getTime() <= Date.now()) throw new RequestFailure(`the certificate issued for ${name} has already expired (${leaf.validTo})`, 'failed');
    const stored = await this.o.store.save(certPem, keyPem);
    if (!satisfies(stored, template)) {
      this.o.log.warn('the issued certificate does not hold all that was asked for; using it anyway', { role: this.o.role, csr: name, wanted: describeTemplate(template), subject: leaf.subject.replace(/\n/g, ', ') });
    }
    this.requests?.inc({ role: this.o.role, result: 'issued' });
    this.o.log.info('certificate issued', { role: this.o.role, csr: name, serial: leaf.serialNumber, notAfter: stored.notAfter.toISOString(), path: stored.path });
    return stored;
  }

  private deadline(pair: StoredPair): number {
    let at = this.deadlines.get(pair);
    if (at === undefined) {
      const fraction = this.o.renewFraction?.() ?? 0.7 + randomInt(0, 200_001) / 1_000_000;
      at = pair.notBefore.getTime() + fraction * (pair.notAfter.getTime() - pair.notBefore.getTime());
      this.deadlines.set(pair, at);
    }
    return at;
  }
}

/**
 * Whether a certificate holds what the template asks for: the same CN, and every O and SAN
 * asked for (more is fine), as client-go decides when to renew.
 */
export function satisfies(pair: Pick<StoredPair, 'certPem'>, template: CertificateTemplate): boolean {
  const leaf = new X509Certificate(pair.certPem);
  const lines = leaf.subject.split('\n');
  const cn = lines.find((l) => l.startsWith('CN='))?.slice(3);
  const orgs = lines.filter((l) => l.startsWith('O=')).map((l) => l.slice(2));
  const sans = certificateSans(pair.certPem);
  return cn === template.commonName
    && template.organization.every((o) => orgs.includes(o))
    && template.dnsNames.every((d) => sans.dnsNames.includes(d))
    && template.ips.every((ip) => sans.ips.includes(ip));
}

function describeTemplate(t: CertificateTemplate): string {
  return [`CN=${t.commonName}`, ...t.organization.map((o) => `O=${o}`), ...t.dnsNames.map((d) => `DNS:${d}`), ...t.ips.map((ip) => `IP:${ip}`)].join(', ');
}

/** The longest delay a Node timer takes; a longer one fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Emits once after `ms` (at once when not positive), however far off: certificates live for months. */
function delay(ms: number): Observable<0> {
  if (ms <= MAX_TIMER_MS) return timer(Math.max(0, ms));
  return timer(MAX_TIMER_MS).pipe(switchMap(() => delay(ms - MAX_TIMER_MS)));
}
