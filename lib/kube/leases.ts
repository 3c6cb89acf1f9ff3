/**
 * The server count from coordination.k8s.io/v1 Leases, as konnectivity's lease controller
 * (v0.31+) keeps it: every server holds a Lease of its own in one namespace, labelled alike,
 * and renews it; the servers whose Lease has not expired (renewTime, or acquireTime, plus
 * leaseDurationSeconds is in the future) are the count. Each server also deletes expired
 * Leases with the label (a server that died without deleting its own), and deletes its own
 * when it stops. An agent may count the same Leases (countServerLeases).
 */
import { CoordinationV1Api, type V1Lease } from '@kubernetes/client-node';
import { BehaviorSubject, EMPTY, catchError, defer, distinctUntilChanged, exhaustMap, map, retry, tap, timer, type Observable, type Subscription } from 'rxjs';
import { Backoff } from '../common/backoff.js';
import type { Logger } from '../observe/log.js';
import { KubeApiError, kubeCall, type ApiAction } from './api-errors.js';
import type { KubeConnection } from './kube-config.js';

export const DEFAULT_LEASE_LABEL = 'k8s-app=konnectivity-server';
export const DEFAULT_LEASE_DURATION_MS = 30_000;
export const DEFAULT_LEASE_RENEW_INTERVAL_MS = 15_000;
/** How long stopping waits for the API server to delete this server's Lease. */
const DELETE_TIMEOUT_MS = 5_000;

export interface ServerLeasesOptions {
  kube: KubeConnection;
  namespace: string;
  serverID: string;
  /** The labels every server's Lease carries; the count is of the Leases that have them all. */
  labels: Record<string, string>;
  durationMs?: number;
  renewIntervalMs?: number;
  log: Logger;
  /** The clock (tests move it). */
  now?: () => Date;
}

/** Parses `k=v,k2=v2` (--lease-label) into labels; throws with the reason on a malformed one. */
export function parseLeaseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const pair of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const [key, value, ...rest] = pair.split('=');
    if (!key || value === undefined || rest.length > 0) throw new Error(`"${pair}" is not a label: give KEY=VALUE, comma-separated`);
    labels[key] = value;
  }
  if (Object.keys(labels).length === 0) throw new Error('no label: give KEY=VALUE, comma-separated, e.g. k8s-app=konnectivity-server');
  return labels;
}

/** The Lease name of a server: konnectivity's form. */
export function leaseName(serverID: string): string {
  return `konnectivity-proxy-server-${serverID}`;
}

/** Whether `lease` is still held at `now`. */
export function leaseLive(lease: V1Lease, now: Date): boolean {
  const since = lease.spec?.renewTime ?? lease.spec?.acquireTime;
  const seconds = lease.spec?.leaseDurationSeconds;
  if (since === undefined || seconds === undefined) return false;
  return new Date(since).getTime() + seconds * 1000 > now.getTime();
}

export class ServerLeases {
  /** Live Leases with the labels, this server's included; undefined until first counted. */
  readonly count$ = new BehaviorSubject<number | undefined>(undefined);

  private readonly api: CoordinationV1Api;
  private readonly name: string;
  private readonly durationMs: number;
  private readonly renewIntervalMs: number;
  private readonly now: () => Date;
  private readonly selector: string;
  private loop?: Subscription;

  constructor(private readonly o: ServerLeasesOptions) {
    this.api = o.kube.config.makeApiClient(CoordinationV1Api);
    this.name = leaseName(o.serverID);
    this.durationMs = o.durationMs ?? DEFAULT_LEASE_DURATION_MS;
    this.renewIntervalMs = o.renewIntervalMs ?? DEFAULT_LEASE_RENEW_INTERVAL_MS;
    this.now = o.now ?? (() => new Date());
    this.selector = Object.entries(o.labels).map(([k, v]) => `${k}=${v}`).join(',');
  }

  /** Renews and counts now and every renew interval; a failed round is retried with back-off, and the last count stands meanwhile. */
  start(): void {
    const backoff = new Backoff({ initialMs: Math.min(1_000, this.renewIntervalMs), maxMs: this.renewIntervalMs });
    this.o.log.info('counting servers by their Leases', {
      namespace: this.o.namespace, lease: this.name, labels: this.selector, duration: `${this.durationMs}ms`, renewEvery: `${this.renewIntervalMs}ms`,
    });
    this.loop = timer(0, this.renewIntervalMs).pipe(
      exhaustMap(() => defer(() => this.round()).pipe(
        tap(() => backoff.reset()),
        retry({
          delay: (err: Error) => {
            const ms = backoff.next();
            this.o.log.warn('cannot renew or count the servers\' Leases; retrying (the server count stays as it was)', { in: `${ms}ms`, reason: err.message });
            return timer(ms);
          },
        }),
      )),
    ).subscribe();
  }

  /** Stops renewing and deletes this server's Lease, so that the others count one less at once. */
  async stop(): Promise<void> {
    if (!this.loop) return;
    this.loop.unsubscribe();
    this.loop = undefined;
    const action: ApiAction = { verb: 'delete', resource: 'leases', group: 'coordination.k8s.io', name: this.name, namespace: this.o.namespace };
    let timeout: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        kubeCall(action, this.o.kube.server, () => this.api.deleteNamespacedLease({ name: this.name, namespace: this.o.namespace })),
        new Promise((_, reject) => { timeout = setTimeout(() => reject(new Error(`no answer within ${DELETE_TIMEOUT_MS} ms`)), DELETE_TIMEOUT_MS); }),
      ]);
      this.o.log.info('deleted this server\'s Lease', { namespace: this.o.namespace, lease: this.name });
    } catch (err) {
      if (err instanceof KubeApiError && err.code === 404) return;
      this.o.log.warn('cannot delete this server\'s Lease; it expires by itself', { lease: this.name, reason: (err as Error).message });
    } finally {
      clearTimeout(timeout);
    }
  }

  /** One round: renew (or create) this server's Lease, count the live ones, delete the expired ones. */
  private async round(): Promise<void> {
    await this.renew();
    const list = await this.call('list', undefined, () => this.api.listNamespacedLease({ namespace: this.o.namespace, labelSelector: this.selector }));
    const now = this.now();
    const live = list.items.filter((lease) => leaseLive(lease, now));
    const count = Math.max(1, live.length);
    if (this.count$.value !== count) this.o.log.info('server count from Leases', { count, live: live.map((l) => l.metadata?.name).join(',') });
    this.count$.next(count);
    for (const lease of list.items) {
      if (leaseLive(lease, now) || lease.metadata?.name === this.name) continue;
      await this.collect(lease);
    }
  }

  private async renew(): Promise<void> {
    const now = this.now();
    const spec = { holderIdentity: this.o.serverID, leaseDurationSeconds: Math.max(1, Math.round(this.durationMs / 1000)), renewTime: now };
    let current: V1Lease | undefined;
    try {
      current = await this.call('get', this.name, () => this.api.readNamespacedLease({ name: this.name, namespace: this.o.namespace }));
    } catch (err) {
      if (!(err instanceof KubeApiError && err.code === 404)) throw err;
    }
    if (!current) {
      const body: V1Lease = {
        metadata: { name: this.name, namespace: this.o.namespace, labels: this.o.labels },
        spec: { ...spec, acquireTime: now },
      };
      await this.call('create', this.name, () => this.api.createNamespacedLease({ namespace: this.o.namespace, body }));
      return;
    }
    // With its resourceVersion: a concurrent change answers 409, and the round is retried.
    const body: V1Lease = {
      ...current,
      metadata: { ...current.metadata, labels: { ...current.metadata?.labels, ...this.o.labels } },
      spec: { ...current.spec, ...spec },
    };
    await this.call('update', this.name, () => this.api.replaceNamespacedLease({ name: this.name, namespace: this.o.namespace, body }));
  }

  /** Deletes an expired Lease of another server, unless it was renewed meanwhile (resourceVersion precondition). */
  private async collect(lease: V1Lease): Promise<void> {
    const name = lease.metadata?.name;
    if (!name) return;
    try {
      await this.call('delete', name, () => this.api.deleteNamespacedLease({
        name, namespace: this.o.namespace, body: { preconditions: { resourceVersion: lease.metadata?.resourceVersion } },
      }));
      this.o.log.info('deleted an expired server Lease', { lease: name, holder: lease.spec?.holderIdentity });
    } catch (err) {
      // Renewed or deleted meanwhile (409, 404): nothing to collect.
      if (err instanceof KubeApiError && (err.code === 404 || err.code === 409)) return;
      throw err;
    }
  }

  private call<T>(verb: string, name: string | undefined, call: () => Promise<T>): Promise<T> {
    return kubeCall({ verb, resource: 'leases', group: 'coordination.k8s.io', name, namespace: this.o.namespace }, this.o.kube.server, call);
  }
}

export interface LeaseCountOptions {
  kube: KubeConnection;
  namespace: string;
  /** Label selector of the servers' Leases, e.g. k8s-app=konnectivity-server. */
  selector: string;
  intervalMs: number;
  log: Logger;
  now?: () => Date;
}

/**
 * The number of live server Leases, as a reference agent's --count-server-leases counts
 * them: listed now and every `intervalMs`; none live counts as 1; a failed list is logged and
 * the last count stands. Emits when the count changes.
 */
export function countServerLeases(o: LeaseCountOptions): Observable<number> {
  const api = o.kube.config.makeApiClient(CoordinationV1Api);
  const now = o.now ?? (() => new Date());
  const action: ApiAction = { verb: 'list', resource: 'leases', group: 'coordination.k8s.io', namespace: o.namespace };
  return timer(0, o.intervalMs).pipe(
    exhaustMap(() => defer(() => kubeCall(action, o.kube.server, () => api.listNamespacedLease({ namespace: o.namespace, labelSelector: o.selector }))).pipe(
      map((list) => Math.max(1, list.items.filter((lease) => leaseLive(lease, now())).length)),
      catchError((err: Error) => {
        o.log.warn('cannot count the servers\' Leases; the server count stays as it was', { namespace: o.namespace, selector: o.selector, reason: err.message });
        return EMPTY;
      }),
    )),
    distinctUntilChanged(),
  );
}
