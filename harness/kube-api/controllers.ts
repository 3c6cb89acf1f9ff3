/**
 * The controllers a cluster runs that change what clients see in a namespace: the
 * ServiceAccount controller (a "default" ServiceAccount in every namespace), the root CA
 * publisher (ConfigMap kube-root-ca.crt with the API server's CA), and the namespace
 * controller (a Terminating namespace is emptied, then finalized away). Also the objects a
 * fresh cluster starts with: the default, kube-system, kube-public and kube-node-lease
 * namespaces and the default/kubernetes Service and Endpoints pointing at the API server.
 */
import { metaString, stringArray, valueAt, type JsonObject } from './json.js';
import { ApiError } from './status.js';
import type { Registry } from './registry.js';
import type { ResourceType, StrategyContext } from './resource-types.js';
import type { UserInfo } from './user.js';

const INITIAL_NAMESPACES = ['default', 'kube-node-lease', 'kube-public', 'kube-system'];
const ROOT_CA_CONFIGMAP = 'kube-root-ca.crt';
const DEFAULT_SERVICE_ACCOUNT = 'default';
/** How often Terminating namespaces are re-checked while objects with finalizers hold them. */
const TERMINATION_RECHECK_MS = 100;
export const KUBERNETES_SERVICE_IP = '10.96.0.1';

const CONTROLLER_USER: UserInfo = { username: 'system:kube-controller-manager', groups: ['system:masters', 'system:authenticated'] };

export class ClusterControllers {
  private readonly unsubscribers: Array<() => void> = [];
  private terminationTimer: NodeJS.Timeout | undefined;

  constructor(private readonly registry: Registry, private readonly caPem: string, private readonly now: () => Date) {}

  private type(resource: string, group = ''): ResourceType {
    const type = this.registry.find(group, resource);
    if (!type) throw new Error(`the ${resource} type is not registered`);
    return type;
  }

  private ctx(): StrategyContext {
    return { user: CONTROLLER_USER, now: this.now(), store: this.registry.store };
  }

  /** Creates what a new cluster has, then keeps namespaces populated and finalized. */
  start(): void {
    const namespaces = this.type('namespaces');
    for (const name of INITIAL_NAMESPACES) this.createIfMissing(namespaces, '', { metadata: { name } });
    this.createIfMissing(this.type('services'), 'default', {
      metadata: { name: 'kubernetes', labels: { component: 'apiserver', provider: 'kubernetes' } },
      spec: { clusterIP: KUBERNETES_SERVICE_IP, ports: [{ name: 'https', port: 443, protocol: 'TCP', targetPort: 6443 }], sessionAffinity: 'None', type: 'ClusterIP' },
    });
    const store = this.registry.store;
    this.unsubscribers.push(store.subscribe(this.registry.key(namespaces), (change) => {
      const name = metaString(change.object, 'name');
      if (change.type === 'ADDED') setImmediate(() => this.populate(name));
      if (change.type === 'MODIFIED' && valueAt(change.object, 'status.phase') === 'Terminating') this.scheduleTermination();
    }));
    for (const resource of ['serviceaccounts', 'configmaps']) {
      this.unsubscribers.push(store.subscribe(this.registry.key(this.type(resource)), (change) => {
        if (change.type !== 'DELETED') return;
        const name = metaString(change.object, 'name');
        if (name === DEFAULT_SERVICE_ACCOUNT || name === ROOT_CA_CONFIGMAP) setImmediate(() => this.populate(metaString(change.object, 'namespace')));
      }));
    }
    for (const ns of store.list(this.registry.key(namespaces))) this.populate(metaString(ns, 'name'));
  }

  stop(): void {
    for (const unsubscribe of this.unsubscribers.splice(0)) unsubscribe();
    clearTimeout(this.terminationTimer);
  }

  /** The API server's own address in default/kubernetes Endpoints. */
  publishApiServer(port: number): void {
    const type = this.type('endpoints');
    const endpoints: JsonObject = {
      metadata: { name: 'kubernetes', namespace: 'default', labels: { 'endpointslice.kubernetes.io/skip-mirror': 'true' } },
      subsets: [{ addresses: [{ ip: '127.0.0.1' }], ports: [{ name: 'https', port, protocol: 'TCP' }] }],
    };
    const existing = this.registry.store.get(this.registry.key(type), 'default', 'kubernetes');
    if (existing) {
      (endpoints.metadata as JsonObject).resourceVersion = metaString(existing, 'resourceVersion');
      this.registry.update(type, 'default', 'kubernetes', endpoints, '', this.ctx());
    } else {
      this.registry.create(type, 'default', endpoints, this.ctx());
    }
  }

  private populate(namespace: string): void {
    const ns = this.registry.store.get(this.registry.key(this.type('namespaces')), '', namespace);
    if (!ns || valueAt(ns, 'status.phase') === 'Terminating') return;
    this.createIfMissing(this.type('serviceaccounts'), namespace, { metadata: { name: DEFAULT_SERVICE_ACCOUNT } });
    this.createIfMissing(this.type('configmaps'), namespace, {
      metadata: { name: ROOT_CA_CONFIGMAP, annotations: { 'kubernetes.io/description': 'Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.' } },
      data: { 'ca.crt': this.caPem },
    });
  }

  private createIfMissing(type: ResourceType, namespace: string, object: JsonObject): void {
    const name = metaString(object, 'name');
    if (this.registry.store.get(this.registry.key(type), type.namespaced ? namespace : '', name)) return;
    try {
      this.registry.create(type, namespace, object, this.ctx());
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
    }
  }

  private scheduleTermination(delay = 0): void {
    if (this.terminationTimer) return;
    this.terminationTimer = setTimeout(() => {
      this.terminationTimer = undefined;
      if (this.finalizeTerminating()) this.scheduleTermination(TERMINATION_RECHECK_MS);
    }, delay);
  }

  /** Empties each Terminating namespace and removes those left empty; true while some still wait for finalizers. */
  private finalizeTerminating(): boolean {
    const namespaces = this.type('namespaces');
    const store = this.registry.store;
    let waiting = false;
    for (const ns of store.list(this.registry.key(namespaces))) {
      if (valueAt(ns, 'status.phase') !== 'Terminating') continue;
      const namespace = metaString(ns, 'name');
      let remaining = 0;
      for (const type of this.registry.all().filter((t) => t.namespaced)) {
        for (const object of store.list(this.registry.key(type), namespace)) {
          try {
            this.registry.delete(type, namespace, metaString(object, 'name'), { gracePeriodSeconds: 0 }, this.ctx());
          } catch (err) {
            if (!(err instanceof ApiError)) throw err;
          }
        }
        remaining += store.list(this.registry.key(type), namespace).length;
      }
      if (remaining > 0) {
        waiting = true;
        continue;
      }
      const finalized = structuredClone(ns);
      (finalized.spec as JsonObject).finalizers = stringArray(valueAt(ns, 'spec.finalizers')).filter((f) => f !== 'kubernetes');
      if (stringArray(valueAt(finalized, 'metadata.finalizers')).length === 0) store.delete(this.registry.key(namespaces), '', namespace);
      else store.update(this.registry.key(namespaces), finalized);
    }
    return waiting;
  }
}
