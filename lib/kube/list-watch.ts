/**
 * A list, then a watch from the list's resourceVersion, as one Observable of events: the
 * watch resumes from the last resourceVersion it saw when the API server ends it (they do,
 * every few minutes), lists again when that version is too old (410 Gone, sent as an ERROR
 * event or as the watch's status), and retries with back-off when the server cannot be
 * reached, until unsubscribed. After each list every current object comes as ADDED, so
 * consumers handle an object the same whether they saw it before or not.
 */
import { Watch, type KubeConfig } from '@kubernetes/client-node';
import { Observable } from 'rxjs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Backoff, type BackoffOptions } from '../common/backoff.js';
import type { Logger } from '../observe/log.js';
import { kubeApiError, statusCodeOf, type ApiAction } from './api-errors.js';

export interface KubeObject {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string; uid?: string };
}

export interface WatchEvent<T> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: T;
}

export interface ListWatchOptions<T> {
  config: KubeConfig;
  server: string;
  /** The collection's path, e.g. /apis/certificates.k8s.io/v1/certificatesigningrequests. */
  path: string;
  /** The collection, for messages: verb list/watch is added. */
  resource: Omit<ApiAction, 'verb'>;
  list(): Promise<{ items: T[]; metadata?: { resourceVersion?: string } }>;
  fieldSelector?: string;
  labelSelector?: string;
  /** Between failed attempts; 1 s doubling to 30 s by default. */
  retry?: BackoffOptions;
  log: Logger;
}

const GONE = 410;

export function listWatch<T extends KubeObject>(o: ListWatchOptions<T>): Observable<WatchEvent<T>> {
  return new Observable<WatchEvent<T>>((subscriber) => {
    const backoff = new Backoff({ initialMs: 1_000, factor: 2, maxMs: 30_000, ...o.retry });
    const stop = new AbortController();
    let watching: AbortController | undefined;
    let resourceVersion: string | undefined;

    /** Watches from resourceVersion until the server ends the watch; true when the version has expired. */
    const watchOnce = () => new Promise<boolean>((resolve, reject) => {
      let expired = false;
      let failure: unknown;
      const query = { resourceVersion, fieldSelector: o.fieldSelector, labelSelector: o.labelSelector, allowWatchBookmarks: true };
      new Watch(o.config).watch(o.path, query, (type: string, object: T & { code?: number; message?: string }) => {
        if (type === 'ERROR') {
          if (object.code === GONE) expired = true;
          else failure ??= Object.assign(new Error(object.message ?? 'watch error'), { statusCode: object.code });
          return;
        }
        resourceVersion = object.metadata?.resourceVersion ?? resourceVersion;
        if (type === 'ADDED' || type === 'MODIFIED' || type === 'DELETED') subscriber.next({ type, object });
      }, (err: unknown) => {
        watching = undefined;
        if (err && statusCodeOf(err) === GONE) expired = true;
        else if (err && !stop.signal.aborted) failure ??= err;
        if (failure) reject(failure instanceof Error ? failure : new Error(JSON.stringify(failure)));
        else resolve(expired);
      }).then((controller) => {
        watching = controller;
        if (stop.signal.aborted) controller.abort();
      }, reject);
    });

    const run = async () => {
      while (!stop.signal.aborted) {
        try {
          if (resourceVersion === undefined) {
            const list = await o.list();
            if (stop.signal.aborted) return;
            resourceVersion = list.metadata?.resourceVersion;
            for (const object of list.items) subscriber.next({ type: 'ADDED', object });
          }
          const expired = await watchOnce();
          backoff.reset();
          if (expired) {
            o.log.debug('watch resourceVersion expired; listing again', { path: o.path, resourceVersion });
            resourceVersion = undefined;
          }
        } catch (err) {
          if (stop.signal.aborted) return;
          const delay = backoff.next();
          const error = kubeApiError(err, { verb: resourceVersion === undefined ? 'list' : 'watch', ...o.resource }, o.server);
          o.log.warn('cannot follow Kubernetes objects; retrying', { in: `${delay}ms`, reason: error.message });
          await sleep(delay, undefined, { signal: stop.signal }).catch(() => undefined);
        }
      }
    };
    void run();
    return () => {
      stop.abort();
      watching?.abort();
    };
  });
}
