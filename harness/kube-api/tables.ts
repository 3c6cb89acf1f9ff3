/**
 * Server-side printing: when a client asks for a meta.k8s.io Table (kubectl get does), lists
 * and objects come back as rows with the columns kube-apiserver's printers give each built-in
 * type (CSR: signer, requestor, requested duration, condition; Secret: type and data count;
 * ...), and custom resources get a CRD's default Name and Age. kubectl chooses its
 * "No resources found" wording and its columns from this.
 */
import { isObject, metaString, stringArray, valueAt, type JsonObject } from './json.js';
import { humanAge, parseTime } from './time.js';
import type { ResourceType } from './resource-types.js';

export const TABLE_CONTENT_TYPE = 'application/json;as=Table;v=v1;g=meta.k8s.io';

interface Column {
  name: string;
  type: 'string' | 'integer' | 'date';
  format?: string;
  description: string;
  priority?: number;
}

type Cells = (object: JsonObject, now: Date) => Array<string | number>;

interface TableDefinition {
  columns: Column[];
  cells: Cells;
}

const NAME: Column = { name: 'Name', type: 'string', format: 'name', description: 'Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically.' };
const AGE: Column = { name: 'Age', type: 'string', description: 'CreationTimestamp is a timestamp representing the server time when this object was created.' };
const NONE = '<none>';

function age(object: JsonObject, now: Date): string {
  const created = parseTime(metaString(object, 'creationTimestamp'));
  return created ? humanAge(created, now) : '<unknown>';
}

function count(value: unknown): number {
  return isObject(value) ? Object.keys(value).length : 0;
}

function text(value: unknown): string {
  return typeof value === 'string' || typeof value === 'number' ? String(value) : '';
}

function list(value: unknown): JsonObject[] {
  return Array.isArray(value) ? value.filter(isObject) : [];
}

/** printers.go extractCSRStatus: Denied over Approved over Pending, then Failed and Issued. */
function csrCondition(csr: JsonObject): string {
  const types = new Set(list(valueAt(csr, 'status.conditions')).map((c) => c.type));
  let status = types.has('Denied') ? 'Denied' : types.has('Approved') ? 'Approved' : 'Pending';
  if (types.has('Failed')) status += ',Failed';
  if (text(valueAt(csr, 'status.certificate')) !== '') status += ',Issued';
  return status;
}

function servicePorts(service: JsonObject): string {
  const ports = list(valueAt(service, 'spec.ports')).map((p) => `${text(p.port)}${p.nodePort !== undefined ? `:${text(p.nodePort)}` : ''}/${text(p.protocol) || 'TCP'}`);
  return ports.length > 0 ? ports.join(',') : NONE;
}

function externalIp(service: JsonObject): string {
  const type = text(valueAt(service, 'spec.type'));
  if (type === 'ExternalName') return text(valueAt(service, 'spec.externalName'));
  const external = stringArray(valueAt(service, 'spec.externalIPs'));
  if (type === 'LoadBalancer') {
    const ingress = list(valueAt(service, 'status.loadBalancer.ingress')).map((i) => text(i.ip) || text(i.hostname));
    const all = [...ingress, ...external];
    return all.length > 0 ? all.join(',') : '<pending>';
  }
  return external.length > 0 ? external.join(',') : NONE;
}

function endpointsText(ep: JsonObject): string {
  const entries: string[] = [];
  for (const subset of list(ep.subsets)) {
    const ports = list(subset.ports);
    for (const address of list(subset.addresses)) {
      if (ports.length === 0) entries.push(text(address.ip));
      for (const port of ports) entries.push(`${text(address.ip)}:${text(port.port)}`);
    }
  }
  if (entries.length === 0) return NONE;
  return entries.length > 3 ? `${entries.slice(0, 3).join(',')} + ${entries.length - 3} more...` : entries.join(',');
}

function podCells(pod: JsonObject, now: Date): Array<string | number> {
  const containers = list(valueAt(pod, 'spec.containers'));
  const statuses = list(valueAt(pod, 'status.containerStatuses'));
  const ready = statuses.filter((s) => s.ready === true).length;
  const restarts = statuses.reduce((sum, s) => sum + (typeof s.restartCount === 'number' ? s.restartCount : 0), 0);
  let status = text(valueAt(pod, 'status.reason')) || text(valueAt(pod, 'status.phase'));
  if (metaString(pod, 'deletionTimestamp') !== '') status = 'Terminating';
  return [
    metaString(pod, 'name'), `${ready}/${containers.length}`, status, restarts, age(pod, now),
    text(valueAt(pod, 'status.podIP')) || NONE, text(valueAt(pod, 'spec.nodeName')) || NONE,
    text(valueAt(pod, 'status.nominatedNodeName')) || NONE, NONE,
  ];
}

function nodeStatus(node: JsonObject): string {
  const ready = list(valueAt(node, 'status.conditions')).find((c) => c.type === 'Ready');
  let status = ready?.status === 'True' ? 'Ready' : ready?.status === 'False' ? 'NotReady' : 'Unknown';
  if (valueAt(node, 'spec.unschedulable') === true) status += ',SchedulingDisabled';
  return status;
}

function nodeRoles(node: JsonObject): string {
  const labels = valueAt(node, 'metadata.labels');
  const roles = isObject(labels) ? Object.keys(labels).filter((k) => k.startsWith('node-role.kubernetes.io/')).map((k) => k.slice('node-role.kubernetes.io/'.length)) : [];
  return roles.length > 0 ? roles.sort().join(',') : NONE;
}

const TABLES: Record<string, TableDefinition> = {
  '/namespaces': {
    columns: [NAME, { name: 'Status', type: 'string', description: 'The status of the namespace' }, AGE],
    cells: (o, now) => [metaString(o, 'name'), text(valueAt(o, 'status.phase')), age(o, now)],
  },
  '/secrets': {
    columns: [NAME, { name: 'Type', type: 'string', description: 'The type of the secret' }, { name: 'Data', type: 'string', description: 'The number of entries in the secret' }, AGE],
    cells: (o, now) => [metaString(o, 'name'), text(o.type), count(o.data), age(o, now)],
  },
  '/configmaps': {
    columns: [NAME, { name: 'Data', type: 'string', description: 'The number of entries in the configmap' }, AGE],
    cells: (o, now) => [metaString(o, 'name'), count(o.data) + count(o.binaryData), age(o, now)],
  },
  '/serviceaccounts': {
    columns: [NAME, { name: 'Secrets', type: 'string', description: 'Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.' }, AGE],
    cells: (o, now) => [metaString(o, 'name'), list(o.secrets).length, age(o, now)],
  },
  '/services': {
    columns: [
      NAME, { name: 'Type', type: 'string', description: 'The type of the service' }, { name: 'Cluster-IP', type: 'string', description: 'The cluster IP of the service' },
      { name: 'External-IP', type: 'string', description: 'The external IPs of the service' }, { name: 'Port(s)', type: 'string', description: 'The ports of the service' }, AGE,
      { name: 'Selector', type: 'string', priority: 1, description: 'Route service traffic to pods with label keys and values matching this selector.' },
    ],
    cells: (o, now) => {
      const selector = valueAt(o, 'spec.selector');
      const selectorText = isObject(selector) && Object.keys(selector).length > 0 ? Object.entries(selector).map(([k, v]) => `${k}=${text(v)}`).sort().join(',') : NONE;
      return [metaString(o, 'name'), text(valueAt(o, 'spec.type')), text(valueAt(o, 'spec.clusterIP')) || NONE, externalIp(o), servicePorts(o), age(o, now), selectorText];
    },
  },
  '/endpoints': {
    columns: [NAME, { name: 'Endpoints', type: 'string', description: 'The endpoints of the service' }, AGE],
    cells: (o, now) => [metaString(o, 'name'), endpointsText(o), age(o, now)],
  },
  '/pods': {
    columns: [
      NAME, { name: 'Ready', type: 'string', description: 'The aggregate readiness state of this pod for accepting traffic.' },
      { name: 'Status', type: 'string', description: 'The aggregate status of the containers in this pod.' },
      { name: 'Restarts', type: 'string', description: 'The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.' }, AGE,
      { name: 'IP', type: 'string', priority: 1, description: 'IP address allocated to the pod.' }, { name: 'Node', type: 'string', priority: 1, description: 'Name of the Node the Pod is scheduled on.' },
      { name: 'Nominated Node', type: 'string', priority: 1, description: 'nominatedNodeName is set only when this pod preempts other pods on the node.' },
      { name: 'Readiness Gates', type: 'string', priority: 1, description: 'If specified, all readiness gates will be evaluated for pod readiness.' },
    ],
    cells: podCells,
  },
  '/nodes': {
    columns: [
      NAME, { name: 'Status', type: 'string', description: 'The status of the node' }, { name: 'Roles', type: 'string', description: 'The roles of the node' }, AGE,
      { name: 'Version', type: 'string', description: 'Kubelet Version reported by the node.' },
    ],
    cells: (o, now) => [metaString(o, 'name'), nodeStatus(o), nodeRoles(o), age(o, now), text(valueAt(o, 'status.nodeInfo.kubeletVersion'))],
  },
  'certificates.k8s.io/certificatesigningrequests': {
    columns: [
      NAME, AGE, { name: 'SignerName', type: 'string', description: 'Only one signer is allowed per request.' },
      { name: 'Requestor', type: 'string', description: 'Name of the user which created the request.' },
      { name: 'RequestedDuration', type: 'string', description: 'expirationSeconds is the requested duration of validity of the issued certificate.' },
      { name: 'Condition', type: 'string', description: 'Condition of the CSR' },
    ],
    cells: (o, now) => {
      const seconds = valueAt(o, 'spec.expirationSeconds');
      return [
        metaString(o, 'name'), age(o, now), text(valueAt(o, 'spec.signerName')) || NONE, text(valueAt(o, 'spec.username')),
        typeof seconds === 'number' ? humanAge(new Date(now.getTime() - seconds * 1000), now) : NONE, csrCondition(o),
      ];
    },
  },
  'coordination.k8s.io/leases': {
    columns: [NAME, { name: 'Holder', type: 'string', description: 'The holder of the lease' }, AGE],
    cells: (o, now) => [metaString(o, 'name'), text(valueAt(o, 'spec.holderIdentity')), age(o, now)],
  },
};

/** What a CRD without additionalPrinterColumns prints: its defaulted Age column, a date the server renders as an age. */
const CUSTOM_TABLE: TableDefinition = {
  columns: [NAME, { name: 'Age', type: 'date', description: AGE.description }],
  cells: (o, now) => [metaString(o, 'name'), age(o, now)],
};

/** Whether the Accept header asks for a Table (as=Table;g=meta.k8s.io). */
export function wantsTable(accept: string | undefined): boolean {
  if (!accept) return false;
  return accept.split(',').some((part) => {
    const params = part.split(';').map((p) => p.trim());
    return params.includes('as=Table') && params.includes('g=meta.k8s.io');
  });
}

/** A Table of objects (a list, or one object as one row). */
export function toTable(type: ResourceType, objects: JsonObject[], listMetadata: JsonObject, includeObject: string, now: Date): JsonObject {
  const definition = type.custom ? CUSTOM_TABLE : TABLES[`${type.group}/${type.resource}`] ?? CUSTOM_TABLE;
  return {
    kind: 'Table',
    apiVersion: 'meta.k8s.io/v1',
    metadata: listMetadata,
    columnDefinitions: definition.columns.map((c) => ({ priority: 0, ...c, format: c.format ?? '' })),
    rows: objects.map((object) => ({ cells: definition.cells(object, now), object: rowObject(object, includeObject) })),
  };
}

function rowObject(object: JsonObject, includeObject: string): JsonObject | null {
  if (includeObject === 'None') return null;
  if (includeObject === 'Object') return object;
  return { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: object.metadata ?? {} };
}
