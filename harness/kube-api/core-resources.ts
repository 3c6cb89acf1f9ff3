/**
 * Core v1 types the double serves, each with the parts of its registry strategy that clients
 * notice: Namespaces (Active phase, the kubernetes finalizer, the metadata.name label),
 * Secrets (base64 data, stringData folded into data, type and immutability rules), ConfigMaps,
 * ServiceAccounts, Services (ClusterIP and NodePort allocation, port defaults), Endpoints,
 * Pods (defaults and Pending status) and Nodes.
 */
import { isIP } from 'node:net';
import { childObject, isObject, metaString, scalarText, stringArray, valueAt, type JsonObject } from './json.js';
import { decodeError, requireBase64Values } from './decode.js';
import { decodeBase64 } from './base64.js';
import { forbidden, index, invalid, key as keyPath, notSupported, required, tooLong, type FieldError } from './field-errors.js';
import { isConfigMapKey, isDns1123Label } from './name-validation.js';
import { builtInType, metaFields, statusOnlyStrategy } from './builtin-type.js';
import type { ResourceType } from './resource-types.js';

const V1 = 'v1';
/** MaxSecretSize, also the ConfigMap limit. */
const MAX_DATA_SIZE = 1024 * 1024;
const SERVICE_CIDR_BASE = [10, 96, 0, 0];
/** 10.96.0.0/12 without the network address and 10.96.0.1 (the kubernetes Service). */
const SERVICE_IP_COUNT = 2 ** 20 - 2;
const NODE_PORT_MIN = 30000;
const NODE_PORT_MAX = 32767;
const PROTOCOLS = ['SCTP', 'TCP', 'UDP'];
const SECRET_TYPE_REQUIRED_KEYS: Record<string, string[]> = {
  'kubernetes.io/tls': ['tls.crt', 'tls.key'],
  'kubernetes.io/dockerconfigjson': ['.dockerconfigjson'],
  'kubernetes.io/dockercfg': ['.dockercfg'],
  'kubernetes.io/ssh-auth': ['ssh-privatekey'],
};
const SA_NAME_ANNOTATION = 'kubernetes.io/service-account.name';

function immutableField(field: string, now: unknown, before: unknown): FieldError[] {
  if (JSON.stringify(now ?? null) === JSON.stringify(before ?? null)) return [];
  return [invalid(field, typeof now === 'string' || typeof now === 'number' ? now : JSON.stringify(now ?? null), 'field is immutable')];
}

function dataKeyErrors(map: unknown, field: string): FieldError[] {
  if (!isObject(map)) return [];
  const errors: FieldError[] = [];
  for (const k of Object.keys(map)) for (const msg of isConfigMapKey(k)) errors.push(invalid(keyPath(field, k), k, msg));
  return errors;
}

function base64Size(map: unknown): number {
  if (!isObject(map)) return 0;
  let size = 0;
  for (const value of Object.values(map)) {
    if (typeof value !== 'string') continue;
    const decoded = decodeBase64(value);
    if (Buffer.isBuffer(decoded)) size += decoded.length;
  }
  return size;
}

/** ValidateConfigMap/ValidateSecret's rule for objects marked immutable. */
function immutabilityErrors(object: JsonObject, old: JsonObject, fields: string[]): FieldError[] {
  if (old.immutable !== true) return [];
  const errors: FieldError[] = [];
  for (const field of fields) {
    if (JSON.stringify(object[field] ?? {}) !== JSON.stringify(old[field] ?? {})) errors.push(forbidden(field, 'field is immutable when `immutable` is set'));
  }
  if (object.immutable !== true) errors.push(forbidden('immutable', 'field is immutable when `immutable` is set'));
  return errors;
}

export function namespaces(): ResourceType {
  return builtInType({
    group: '', version: V1, resource: 'namespaces', kind: 'Namespace', singular: 'namespace', namespaced: false, shortNames: ['ns'],
    nameRule: 'label',
    fieldLabels: { supported: ['metadata.name', 'status.phase'], style: 'explicit' },
    fields: (ns) => ({ 'metadata.name': metaString(ns, 'name'), 'status.phase': scalarText(valueAt(ns, 'status.phase')) }),
    returnDeletedObject: true,
    hasStatus: true,
    strategicSchema: { 'status.conditions': { mergeKey: 'type' } },
    strategy: {
      defaults(ns) {
        const status = childObject(ns, 'status');
        if (!status.phase) status.phase = 'Active';
      },
      prepareForCreate(ns) {
        ns.status = { phase: 'Active' };
        const spec = childObject(ns, 'spec');
        const finalizers = stringArray(spec.finalizers);
        if (!finalizers.includes('kubernetes')) spec.finalizers = [...finalizers, 'kubernetes'];
      },
      prepareForUpdate(ns, old) {
        ns.spec = structuredClone(old.spec);
        ns.status = structuredClone(old.status);
      },
      canonicalize(ns) {
        const name = metaString(ns, 'name');
        if (name !== '') childObject(childObject(ns, 'metadata'), 'labels')['kubernetes.io/metadata.name'] = name;
      },
    },
    subresources: {
      status: {
        prepareForUpdate(ns, old) {
          ns.spec = structuredClone(old.spec);
        },
      },
    },
  });
}

export function secrets(): ResourceType {
  return builtInType({
    group: '', version: V1, resource: 'secrets', kind: 'Secret', singular: 'secret',
    fieldLabels: { supported: ['type', 'metadata.namespace', 'metadata.name'], style: 'explicit' },
    fields: (s) => ({ ...metaFields(s, true), type: typeof s.type === 'string' ? s.type : '' }),
    strategy: {
      decode(secret) {
        requireBase64Values(secret, 'data', 'Secret', V1);
        const stringData = secret.stringData;
        if (stringData !== undefined && stringData !== null) {
          if (!isObject(stringData)) throw decodeError('Secret', V1, 'json: cannot unmarshal into Go struct field Secret.stringData of type map[string]string');
          const data = childObject(secret, 'data');
          for (const [k, v] of Object.entries(stringData)) {
            if (typeof v !== 'string') throw decodeError('Secret', V1, `json: cannot unmarshal ${typeof v} into Go struct field Secret.stringData of type string`);
            data[k] = Buffer.from(v).toString('base64');
          }
        }
        delete secret.stringData;
      },
      defaults(secret) {
        if (typeof secret.type !== 'string' || secret.type === '') secret.type = 'Opaque';
      },
      validate(secret) {
        return validateSecret(secret);
      },
      validateUpdate(secret, old) {
        return [
          ...validateSecret(secret),
          ...immutableField('type', secret.type, old.type),
          ...immutabilityErrors(secret, old, ['data']),
        ];
      },
    },
  });
}

function validateSecret(secret: JsonObject): FieldError[] {
  const errors = dataKeyErrors(secret.data, 'data');
  if (base64Size(secret.data) > MAX_DATA_SIZE) errors.push(tooLong('data', MAX_DATA_SIZE));
  const type = typeof secret.type === 'string' ? secret.type : '';
  const data = isObject(secret.data) ? secret.data : {};
  for (const k of SECRET_TYPE_REQUIRED_KEYS[type] ?? []) if (!(k in data)) errors.push(required(keyPath('data', k)));
  if (type === 'kubernetes.io/service-account-token') {
    const annotations = valueAt(secret, 'metadata.annotations');
    if (!isObject(annotations) || typeof annotations[SA_NAME_ANNOTATION] !== 'string') errors.push(required(keyPath('metadata.annotations', SA_NAME_ANNOTATION)));
  }
  return errors;
}

export function configMaps(): ResourceType {
  return builtInType({
    group: '', version: V1, resource: 'configmaps', kind: 'ConfigMap', singular: 'configmap', shortNames: ['cm'],
    strategy: {
      decode(cm) {
        const data = cm.data;
        if (isObject(data)) {
          for (const v of Object.values(data)) {
            if (typeof v !== 'string') throw decodeError('ConfigMap', V1, `json: cannot unmarshal ${typeof v} into Go struct field ConfigMap.data of type string`);
          }
        }
        requireBase64Values(cm, 'binaryData', 'ConfigMap', V1);
      },
      validate(cm) {
        return validateConfigMap(cm);
      },
      validateUpdate(cm, old) {
        return [...validateConfigMap(cm), ...immutabilityErrors(cm, old, ['data', 'binaryData'])];
      },
    },
  });
}

function validateConfigMap(cm: JsonObject): FieldError[] {
  const errors = [...dataKeyErrors(cm.data, 'data'), ...dataKeyErrors(cm.binaryData, 'binaryData')];
  const data = isObject(cm.data) ? cm.data : {};
  const binary = isObject(cm.binaryData) ? cm.binaryData : {};
  for (const k of Object.keys(binary)) if (k in data) errors.push(invalid(keyPath('data', k), k, 'duplicate of key present in binaryData'));
  let size = base64Size(binary);
  for (const v of Object.values(data)) if (typeof v === 'string') size += Buffer.byteLength(v);
  if (size > MAX_DATA_SIZE) errors.push(tooLong('', MAX_DATA_SIZE));
  return errors;
}

export function serviceAccounts(): ResourceType {
  return builtInType({
    group: '', version: V1, resource: 'serviceaccounts', kind: 'ServiceAccount', singular: 'serviceaccount', shortNames: ['sa'],
    returnDeletedObject: true,
  });
}

/** Allocates ClusterIPs and NodePorts the way the Service REST does, from state it keeps. */
export class ServiceAllocator {
  private readonly usedIps = new Set<string>(['10.96.0.1']);
  private readonly usedPorts = new Set<number>();
  private nextIp = 10;
  private nextPort = NODE_PORT_MIN;

  reserve(service: JsonObject): void {
    const ip = valueAt(service, 'spec.clusterIP');
    if (typeof ip === 'string') this.usedIps.add(ip);
    for (const port of servicePorts(service)) if (typeof port.nodePort === 'number') this.usedPorts.add(port.nodePort);
  }

  release(service: JsonObject): void {
    const ip = valueAt(service, 'spec.clusterIP');
    if (typeof ip === 'string' && ip !== '10.96.0.1') this.usedIps.delete(ip);
    for (const port of servicePorts(service)) if (typeof port.nodePort === 'number') this.usedPorts.delete(port.nodePort);
  }

  clusterIp(): string {
    for (let tries = 0; tries < SERVICE_IP_COUNT; tries++) {
      const n = this.nextIp;
      this.nextIp = this.nextIp >= SERVICE_IP_COUNT ? 2 : this.nextIp + 1;
      const ip = [SERVICE_CIDR_BASE[0], SERVICE_CIDR_BASE[1] + (n >> 16), (n >> 8) & 0xff, n & 0xff].join('.');
      if (!this.usedIps.has(ip)) {
        this.usedIps.add(ip);
        return ip;
      }
    }
    throw new Error('the service IP range 10.96.0.0/12 is full');
  }

  nodePort(): number {
    for (let tries = 0; tries <= NODE_PORT_MAX - NODE_PORT_MIN; tries++) {
      const port = this.nextPort;
      this.nextPort = port >= NODE_PORT_MAX ? NODE_PORT_MIN : port + 1;
      if (!this.usedPorts.has(port)) {
        this.usedPorts.add(port);
        return port;
      }
    }
    throw new Error('the node port range 30000-32767 is full');
  }
}

function servicePorts(service: JsonObject): JsonObject[] {
  const ports = valueAt(service, 'spec.ports');
  return Array.isArray(ports) ? ports.filter(isObject) : [];
}

export function services(allocator: ServiceAllocator): ResourceType {
  return builtInType({
    group: '', version: V1, resource: 'services', kind: 'Service', singular: 'service', shortNames: ['svc'], categories: ['all'],
    nameRule: 'dns1035',
    fieldLabels: { supported: ['metadata.namespace', 'metadata.name', 'spec.clusterIP', 'spec.type'], style: 'explicit' },
    fields: (s) => ({ ...metaFields(s, true), 'spec.clusterIP': scalarText(valueAt(s, 'spec.clusterIP')), 'spec.type': scalarText(valueAt(s, 'spec.type')) }),
    allowCreateOnUpdate: true,
    returnDeletedObject: true,
    hasStatus: true,
    strategicSchema: { 'spec.ports': { mergeKey: 'port' }, 'status.conditions': { mergeKey: 'type' } },
    strategy: {
      defaults: defaultService,
      prepareForCreate(service) {
        service.status = { loadBalancer: {} };
        allocateService(service, allocator);
      },
      prepareForUpdate(service, old) {
        service.status = structuredClone(old.status);
        const spec = childObject(service, 'spec');
        for (const field of ['clusterIP', 'clusterIPs']) if (spec[field] === undefined || spec[field] === '') spec[field] = valueAt(old, `spec.${field}`);
        const oldPorts = servicePorts(old);
        for (const port of servicePorts(service)) {
          if (port.nodePort === undefined) {
            const before = oldPorts.find((p) => p.port === port.port && p.protocol === port.protocol);
            if (before?.nodePort !== undefined) port.nodePort = before.nodePort;
          }
        }
        allocateService(service, allocator);
      },
      validate: validateService,
      validateUpdate(service, old) {
        const errors = validateService(service);
        const before = valueAt(old, 'spec.clusterIP');
        if (before !== '' && before !== 'None' && valueAt(service, 'spec.type') !== 'ExternalName') {
          errors.push(...immutableField('spec.clusterIP', valueAt(service, 'spec.clusterIP'), before));
        }
        return errors;
      },
    },
    subresources: { status: statusOnlyStrategy() },
  });
}

function defaultService(service: JsonObject): void {
  const spec = childObject(service, 'spec');
  if (!spec.type) spec.type = 'ClusterIP';
  if (spec.type === 'ExternalName') return;
  if (!spec.sessionAffinity) spec.sessionAffinity = 'None';
  if (!spec.internalTrafficPolicy) spec.internalTrafficPolicy = 'Cluster';
  if ((spec.type === 'NodePort' || spec.type === 'LoadBalancer') && !spec.externalTrafficPolicy) spec.externalTrafficPolicy = 'Cluster';
  for (const port of servicePorts(service)) {
    if (!port.protocol) port.protocol = 'TCP';
    if (port.targetPort === undefined) port.targetPort = port.port;
  }
}

function allocateService(service: JsonObject, allocator: ServiceAllocator): void {
  const spec = childObject(service, 'spec');
  if (spec.type === 'ExternalName') return;
  if (!spec.clusterIP) spec.clusterIP = allocator.clusterIp();
  if (!Array.isArray(spec.clusterIPs) || spec.clusterIPs.length === 0) spec.clusterIPs = [spec.clusterIP];
  if (!Array.isArray(spec.ipFamilies)) spec.ipFamilies = spec.clusterIP === 'None' ? ['IPv4'] : [isIP(String(spec.clusterIP)) === 6 ? 'IPv6' : 'IPv4'];
  if (!spec.ipFamilyPolicy) spec.ipFamilyPolicy = 'SingleStack';
  if (spec.type === 'NodePort' || spec.type === 'LoadBalancer') {
    for (const port of servicePorts(service)) if (port.nodePort === undefined) port.nodePort = allocator.nodePort();
  }
  allocator.reserve(service);
}

function validateService(service: JsonObject): FieldError[] {
  const errors: FieldError[] = [];
  const type = scalarText(valueAt(service, 'spec.type'));
  const types = ['ClusterIP', 'ExternalName', 'LoadBalancer', 'NodePort'];
  if (!types.includes(type)) errors.push(notSupported('spec.type', type, types));
  const headless = valueAt(service, 'spec.clusterIP') === 'None';
  const ports = servicePorts(service);
  if (type === 'ExternalName') {
    const name = valueAt(service, 'spec.externalName');
    if (typeof name !== 'string' || name === '') errors.push(required('spec.externalName'));
  } else if (ports.length === 0 && !headless) {
    errors.push(required('spec.ports'));
  }
  for (const [i, port] of ports.entries()) {
    const path = index('spec.ports', i);
    if (ports.length > 1 && (typeof port.name !== 'string' || port.name === '')) errors.push(required(`${path}.name`));
    if (typeof port.name === 'string' && port.name !== '') for (const msg of isDns1123Label(port.name)) errors.push(invalid(`${path}.name`, port.name, msg));
    if (typeof port.port !== 'number' || port.port < 1 || port.port > 65535) {
      errors.push(invalid(`${path}.port`, typeof port.port === 'number' ? port.port : 0, 'must be between 1 and 65535, inclusive'));
    }
    if (typeof port.protocol === 'string' && !PROTOCOLS.includes(port.protocol)) errors.push(notSupported(`${path}.protocol`, port.protocol, PROTOCOLS));
  }
  return errors;
}

export function endpoints(): ResourceType {
  return builtInType({
    group: '', version: V1, resource: 'endpoints', kind: 'Endpoints', singular: 'endpoints', shortNames: ['ep'],
    allowCreateOnUpdate: true,
    strategy: { validate: validateEndpoints, validateUpdate: validateEndpoints },
  });
}

function validateEndpoints(ep: JsonObject): FieldError[] {
  const errors: FieldError[] = [];
  const subsets = Array.isArray(ep.subsets) ? ep.subsets : [];
  for (const [i, subset] of subsets.entries()) {
    if (!isObject(subset)) continue;
    for (const list of ['addresses', 'notReadyAddresses']) {
      const addresses = Array.isArray(subset[list]) ? subset[list] : [];
      for (const [j, address] of addresses.entries()) {
        const ip = isObject(address) ? address.ip : undefined;
        if (typeof ip !== 'string' || isIP(ip) === 0) errors.push(invalid(`subsets[${i}].${list}[${j}].ip`, typeof ip === 'string' ? ip : '', 'must be a valid IP address'));
      }
    }
    const ports = Array.isArray(subset.ports) ? subset.ports : [];
    for (const [j, port] of ports.entries()) {
      const value = isObject(port) ? port.port : undefined;
      if (typeof value !== 'number' || value < 1 || value > 65535) {
        errors.push(invalid(`subsets[${i}].ports[${j}].port`, typeof value === 'number' ? value : 0, 'must be between 1 and 65535, inclusive'));
      }
    }
  }
  return errors;
}

const POD_FIELDS = ['spec.nodeName', 'spec.restartPolicy', 'spec.schedulerName', 'spec.serviceAccountName', 'spec.hostNetwork', 'status.phase', 'status.podIP', 'status.podIPs', 'status.nominatedNodeName'];

export function pods(): ResourceType {
  return builtInType({
    group: '', version: V1, resource: 'pods', kind: 'Pod', singular: 'pod', shortNames: ['po'], categories: ['all'],
    fieldLabels: { supported: ['metadata.name', 'metadata.namespace', ...POD_FIELDS], style: 'explicit' },
    fields: (pod) => {
      const fields = metaFields(pod, true);
      for (const field of POD_FIELDS) {
        const value = valueAt(pod, field);
        fields[field] = field === 'status.podIPs'
          ? (Array.isArray(value) ? value.map((p) => (isObject(p) ? String(p.ip) : '')).join(',') : '')
          : field === 'spec.hostNetwork' ? String(value === true) : scalarText(value);
      }
      return fields;
    },
    returnDeletedObject: true,
    hasStatus: true,
    strategicSchema: {
      'spec.containers': { mergeKey: 'name' }, 'spec.initContainers': { mergeKey: 'name' }, 'spec.volumes': { mergeKey: 'name' },
      'spec.containers[].env': { mergeKey: 'name' }, 'spec.containers[].ports': { mergeKey: 'containerPort' },
      'spec.containers[].volumeMounts': { mergeKey: 'mountPath' }, 'spec.imagePullSecrets': { mergeKey: 'name' },
      'status.conditions': { mergeKey: 'type' }, 'status.containerStatuses': {},
    },
    strategy: {
      defaults: defaultPod,
      prepareForCreate(pod) {
        pod.status = { phase: 'Pending', qosClass: 'BestEffort' };
      },
      prepareForUpdate(pod, old) {
        pod.status = structuredClone(old.status);
      },
      validate: validatePod,
      validateUpdate: validatePod,
    },
    subresources: { status: statusOnlyStrategy() },
  });
}

function defaultPod(pod: JsonObject): void {
  const spec = childObject(pod, 'spec');
  spec.restartPolicy ??= 'Always';
  spec.dnsPolicy ??= 'ClusterFirst';
  spec.schedulerName ??= 'default-scheduler';
  spec.terminationGracePeriodSeconds ??= 30;
  spec.securityContext ??= {};
  spec.serviceAccountName ??= typeof spec.serviceAccount === 'string' ? spec.serviceAccount : 'default';
  spec.serviceAccount = spec.serviceAccountName;
  spec.enableServiceLinks ??= true;
  spec.preemptionPolicy ??= 'PreemptLowerPriority';
  spec.priority ??= 0;
  const containers = Array.isArray(spec.containers) ? spec.containers.filter(isObject) : [];
  for (const container of containers) {
    const image = typeof container.image === 'string' ? container.image : '';
    const tagged = /:[^/]+$/.test(image) && !image.endsWith(':latest');
    container.imagePullPolicy ??= tagged || image.includes('@') ? 'IfNotPresent' : 'Always';
    container.terminationMessagePath ??= '/dev/termination-log';
    container.terminationMessagePolicy ??= 'File';
    container.resources ??= {};
  }
}

function validatePod(pod: JsonObject): FieldError[] {
  const errors: FieldError[] = [];
  const containers = valueAt(pod, 'spec.containers');
  if (!Array.isArray(containers) || containers.length === 0) return [required('spec.containers')];
  for (const [i, container] of containers.entries()) {
    const path = index('spec.containers', i);
    const name = isObject(container) ? container.name : undefined;
    if (typeof name !== 'string' || name === '') errors.push(required(`${path}.name`));
    else for (const msg of isDns1123Label(name)) errors.push(invalid(`${path}.name`, name, msg));
    const image = isObject(container) ? container.image : undefined;
    if (typeof image !== 'string' || image.trim() === '') errors.push(required(`${path}.image`));
  }
  return errors;
}

export function nodes(): ResourceType {
  return builtInType({
    group: '', version: V1, resource: 'nodes', kind: 'Node', singular: 'node', namespaced: false, shortNames: ['no'],
    fieldLabels: { supported: ['metadata.name', 'spec.unschedulable'], style: 'explicit' },
    fields: (node) => ({ 'metadata.name': metaString(node, 'name'), 'spec.unschedulable': String(valueAt(node, 'spec.unschedulable') === true) }),
    hasStatus: true,
    strategicSchema: { 'status.conditions': { mergeKey: 'type' }, 'status.addresses': { mergeKey: 'type' } },
    strategy: {
      prepareForUpdate(node, old) {
        node.status = structuredClone(old.status);
      },
    },
    subresources: { status: statusOnlyStrategy() },
  });
}
