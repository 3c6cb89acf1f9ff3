/**
 * Watch streams as the API server's watch cache serves them: 200, chunked, one JSON event per
 * line. Without a resourceVersion (or with "0") the stream opens with ADDED for each current
 * object; from a resourceVersion it replays the changes after it, or, when those have left the
 * history, sends one ERROR event carrying 410 Expired and closes. Selectors filter events the
 * way the cache filters them: an object that starts matching arrives as ADDED, one that stops
 * matching as DELETED (its previous state at the new resourceVersion). Bookmarks come when
 * asked for, and the stream ends after timeoutSeconds (or the server's random 30-60 minutes).
 */
import { randomInt } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { canonicalOrder, clone, metadataOf, type JsonObject } from './json.js';
import { expired } from './status.js';
import type { Change, ObjectStore } from './store.js';
import type { Selection } from './selection.js';
import { apiVersionOf, typeKey, type ResourceType } from './resource-types.js';

/** How often a watch that allows bookmarks gets one (the real cache: about once a minute). */
export const BOOKMARK_INTERVAL_MS = 1000;
/** --min-request-timeout: an unbounded watch ends after a random 1-2x of it. */
const MIN_REQUEST_TIMEOUT_SECONDS = 1800;

export interface WatchRequest {
  type: ResourceType;
  selection: Selection;
  /** '' or '0' for "current state first", else a revision to resume after. */
  resourceVersion: string;
  allowBookmarks: boolean;
  timeoutSeconds?: number;
  /** How objects go out (as a one-row Table when the client asked for Tables). */
  render?: (object: JsonObject) => JsonObject;
}

type EventType = 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';

/** A watch in progress; ends when the client goes, the timeout passes or end() is called. */
export class WatchStream {
  private unsubscribe: (() => void) | undefined;
  private readonly timers: NodeJS.Timeout[] = [];
  private ended = false;

  constructor(private readonly store: ObjectStore, private readonly res: ServerResponse, private readonly request: WatchRequest) {}

  start(): void {
    const { type, resourceVersion } = this.request;
    const key = typeKey(type.group, type.resource);
    this.res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private', 'Transfer-Encoding': 'chunked' });
    this.res.flushHeaders();
    this.res.on('close', () => this.end());
    this.res.on('error', () => this.end());
    if (resourceVersion === '' || resourceVersion === '0') {
      for (const object of this.store.list(key)) if (this.request.selection.matches(object)) this.send('ADDED', object);
    } else {
      const changes = this.store.changesSince(key, Number(resourceVersion));
      if (!Array.isArray(changes)) {
        const status = expired(`too old resource version: ${resourceVersion} (${changes.oldestResumable})`).toStatus();
        this.send('ERROR', status);
        this.end();
        return;
      }
      for (const change of changes) this.deliver(change);
    }
    this.unsubscribe = this.store.subscribe(key, (change) => this.deliver(change));
    const timeout = this.request.timeoutSeconds ?? MIN_REQUEST_TIMEOUT_SECONDS + randomInt(MIN_REQUEST_TIMEOUT_SECONDS);
    this.timers.push(setTimeout(() => this.end(), timeout * 1000));
    if (this.request.allowBookmarks) this.timers.push(setInterval(() => this.bookmark(), BOOKMARK_INTERVAL_MS));
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.unsubscribe?.();
    for (const timer of this.timers) clearTimeout(timer);
    if (!this.res.writableEnded && !this.res.destroyed) this.res.end();
  }

  /** The watch cache's filter: ADDED when an object starts matching, DELETED (previous state) when it stops. */
  private deliver(change: Change): void {
    const { selection } = this.request;
    const now = change.type !== 'DELETED' && selection.matches(change.object);
    const before = change.previous !== undefined && selection.matches(change.previous);
    if (now && !before) this.send(change.type === 'MODIFIED' ? 'ADDED' : change.type, change.object);
    else if (now && before) this.send('MODIFIED', change.object);
    else if (!now && before) {
      if (change.type === 'DELETED') this.send('DELETED', change.object);
      else this.send('DELETED', withRevision(change.previous as JsonObject, change.revision));
    }
  }

  private bookmark(): void {
    const { type } = this.request;
    this.send('BOOKMARK', { kind: type.kind, apiVersion: apiVersionOf(type), metadata: { resourceVersion: String(this.store.currentRevision) } });
  }

  private send(type: EventType, object: JsonObject): void {
    if (this.ended || this.res.writableEnded || this.res.destroyed) return;
    const ordered = canonicalOrder(object);
    const rendered = this.request.render && type !== 'ERROR' && type !== 'BOOKMARK' ? this.request.render(ordered) : ordered;
    this.res.write(`${JSON.stringify({ type, object: rendered })}\n`);
  }
}

function withRevision(object: JsonObject, revision: number): JsonObject {
  const copy = clone(object);
  metadataOf(copy).resourceVersion = String(revision);
  return copy;
}
