/**
 * Object storage with etcd's versioning: one global revision counter that every write bumps
 * and stamps into metadata.resourceVersion, objects kept in key order (namespace/name), and,
 * per resource type, a bounded history of changes, as the watch cache keeps, to replay watches
 * and to list at an older revision. Listeners hear every change synchronously, in order.
 */
import { clone, metadataOf, metaString, type JsonObject } from './json.js';

export type ChangeType = 'ADDED' | 'MODIFIED' | 'DELETED';

export interface Change {
  type: ChangeType;
  revision: number;
  /** The object after the change; for DELETED its last state, stamped with the deletion's revision. */
  object: JsonObject;
  /** The object before the change (MODIFIED, DELETED). */
  previous?: JsonObject;
}

export type ChangeListener = (change: Change) => void;

/** What a replay from an old revision gets when that revision has left the history. */
export interface Expired {
  expired: true;
  /** The oldest revision that can still be resumed from (watch_cache's "oldest-1"). */
  oldestResumable: number;
}

class TypeStorage {
  readonly objects = new Map<string, JsonObject>();
  readonly history: Change[] = [];
  readonly listeners = new Set<ChangeListener>();
  /** Every change after this revision is in history. */
  historyStart: number;

  constructor(revision: number) {
    this.historyStart = revision;
  }
}

export function objectKey(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}

export class ObjectStore {
  private revision = 0;
  private readonly types = new Map<string, TypeStorage>();

  constructor(private readonly historyLimit: number) {}

  get currentRevision(): number {
    return this.revision;
  }

  private storage(type: string): TypeStorage {
    let storage = this.types.get(type);
    if (!storage) {
      storage = new TypeStorage(this.revision);
      this.types.set(type, storage);
    }
    return storage;
  }

  /** Starts keeping a type's history from now (as a watch cache starts at its initial list). */
  register(type: string): void {
    this.storage(type);
  }

  get(type: string, namespace: string, name: string): JsonObject | undefined {
    const object = this.storage(type).objects.get(objectKey(namespace, name));
    return object ? clone(object) : undefined;
  }

  /** Current objects in key order, of one namespace or (namespace undefined) all. */
  list(type: string, namespace?: string): JsonObject[] {
    const objects = [...this.storage(type).objects.entries()]
      .filter(([key]) => namespace === undefined || key.startsWith(`${namespace}/`))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, object]) => clone(object));
    return objects;
  }

  /**
   * The objects as they were at a revision, rebuilt by undoing newer changes; Expired when the
   * history no longer reaches back that far (etcd compacted it).
   */
  listAt(type: string, revision: number, namespace?: string): JsonObject[] | Expired {
    const storage = this.storage(type);
    if (revision < storage.historyStart) return { expired: true, oldestResumable: storage.historyStart };
    const state = new Map(storage.objects);
    for (let i = storage.history.length - 1; i >= 0 && storage.history[i].revision > revision; i--) {
      const change = storage.history[i];
      const key = objectKey(metaString(change.object, 'namespace'), metaString(change.object, 'name'));
      if (change.type === 'ADDED') state.delete(key);
      else if (change.previous) state.set(key, change.previous);
    }
    return [...state.entries()]
      .filter(([key]) => namespace === undefined || key.startsWith(`${namespace}/`))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, object]) => clone(object));
  }

  /** Changes after a revision, oldest first, or Expired when some of them are no longer kept. */
  changesSince(type: string, revision: number): Change[] | Expired {
    const storage = this.storage(type);
    if (revision < storage.historyStart) return { expired: true, oldestResumable: storage.historyStart };
    return storage.history.filter((c) => c.revision > revision).map((c) => clone(c));
  }

  /** Stores a new object; returns it as stored. The caller has checked that it does not exist. */
  create(type: string, object: JsonObject): JsonObject {
    const stored = this.stamp(clone(object));
    const key = objectKey(metaString(stored, 'namespace'), metaString(stored, 'name'));
    this.storage(type).objects.set(key, stored);
    this.record(type, { type: 'ADDED', revision: this.revision, object: stored });
    return clone(stored);
  }

  /** Replaces an existing object; returns it as stored. */
  update(type: string, object: JsonObject): JsonObject {
    const storage = this.storage(type);
    const key = objectKey(metaString(object, 'namespace'), metaString(object, 'name'));
    const previous = storage.objects.get(key);
    if (!previous) return this.create(type, object);
    const stored = this.stamp(clone(object));
    storage.objects.set(key, stored);
    this.record(type, { type: 'MODIFIED', revision: this.revision, object: stored, previous });
    return clone(stored);
  }

  /** Removes an object; returns its last state, stamped with the deletion's revision. */
  delete(type: string, namespace: string, name: string): JsonObject | undefined {
    const storage = this.storage(type);
    const key = objectKey(namespace, name);
    const previous = storage.objects.get(key);
    if (!previous) return undefined;
    storage.objects.delete(key);
    const last = this.stamp(clone(previous));
    this.record(type, { type: 'DELETED', revision: this.revision, object: last, previous });
    return clone(last);
  }

  subscribe(type: string, listener: ChangeListener): () => void {
    const { listeners } = this.storage(type);
    listeners.add(listener);
    return () => listeners.delete(listener);
  }

  /** Forgets every type's history: only the current revision can be resumed from. */
  compact(): void {
    for (const storage of this.types.values()) {
      storage.history.length = 0;
      storage.historyStart = this.revision;
    }
  }

  private stamp(object: JsonObject): JsonObject {
    this.revision += 1;
    metadataOf(object).resourceVersion = String(this.revision);
    return object;
  }

  private record(type: string, change: Change): void {
    const storage = this.storage(type);
    storage.history.push(change);
    while (storage.history.length > this.historyLimit) {
      const dropped = storage.history.shift();
      if (dropped) storage.historyStart = dropped.revision;
    }
    for (const listener of [...storage.listeners]) listener(change);
  }
}
