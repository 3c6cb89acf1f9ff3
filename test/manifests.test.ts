/**
 * The Kubernetes manifests in k8s/ as an operator applies them: every object valid against the
 * Kubernetes API's schema (types, formats and required fields from kubernetes-models; field
 * names from @kubernetes/client-node's generated models, so that a misspelt field is refused
 * as the API server's strict field validation refuses it), hardened containers, flags that the
 * binaries accept, paths and ports that match the pod, RBAC equal to what the tests grant
 * (harness/hub.ts), kustomizations that build, and topologies whose agents reach their server.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, posix, relative } from 'node:path';
import { promisify } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import type {
  KubernetesObject, V1ClusterRole, V1ConfigMap, V1Container, V1Deployment, V1PodSpec, V1PolicyRule, V1Probe,
  V1Role, V1RoleBinding, V1Secret, V1Service,
} from '@kubernetes/client-node';
import { AGENT_RULES, HUB_NAMESPACE, SERVER_ACCOUNT, SERVER_RULES, SIGNER_DOMAIN, agentAccount } from '../harness/hub.js';
import type { PolicyRule } from '../harness/kube-api/index.js';
import { BIN, ROOT } from './helpers/paths.js';

const execFileAsync = promisify(execFile);
const K8S = join(ROOT, 'k8s');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; bin: Record<string, string> };
const IMAGE = `tkestack/tke-anp-tunnel:${pkg.version}`;
const RUN_AS_USER = 65532;

type KubeObject = KubernetesObject & { apiVersion: string; kind: string } & Record<string, unknown>;

interface Manifest {
  /** The file, or the kustomization it was built from. */
  source: string;
  object: KubeObject;
}

// ---- reading ------------------------------------------------------------------------------------

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && /\.ya?ml$/.test(e.name))
    .map((e) => join(e.parentPath, e.name))
    .sort();
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseManifests(text: string, source: string): Manifest[] {
  return (k8s.loadAllYaml(text) as unknown[]).filter((doc) => doc !== null && doc !== undefined).map((doc, i) => {
    if (!isObject(doc) || typeof doc.apiVersion !== 'string' || typeof doc.kind !== 'string') {
      throw new Error(`${source}: document ${i + 1} is not a Kubernetes object (apiVersion and kind missing)`);
    }
    return { source, object: doc as KubeObject };
  });
}

function nameOf(m: Manifest): string {
  const meta = m.object.metadata;
  return `${m.source}: ${m.object.kind} ${meta?.namespace ? `${meta.namespace}/` : ''}${meta?.name ?? '(unnamed)'}`;
}

const rawFiles = yamlFiles(K8S);
const raw: Manifest[] = rawFiles.flatMap((file) => parseManifests(readFileSync(file, 'utf8'), relative(ROOT, file)));

/** kustomize's own files, and what kube-apiserver reads from a file: not objects of the API. */
function isKustomizeConfig(o: KubeObject): boolean {
  return o.apiVersion.startsWith('kustomize.config.k8s.io/') || o.apiVersion === 'builtin';
}

function isEgressSelector(o: KubeObject): boolean {
  return o.apiVersion.startsWith('apiserver.k8s.io/') && o.kind === 'EgressSelectorConfiguration';
}

function apiObjects(manifests: Manifest[]): Manifest[] {
  return manifests.filter((m) => !isKustomizeConfig(m.object) && !isEgressSelector(m.object));
}

function objectsOf<T>(manifests: Manifest[], kind: string): Array<T & KubeObject> {
  return manifests.map((m) => m.object).filter((o) => o.kind === kind) as Array<T & KubeObject>;
}

function find<T>(manifests: Manifest[], kind: string, name: string, namespace?: string): (T & KubeObject) | undefined {
  return objectsOf<T>(manifests, kind).find((o) => o.metadata?.name === name && (namespace === undefined || o.metadata?.namespace === namespace));
}

// ---- schema -------------------------------------------------------------------------------------

interface ModelClass {
  new (data: unknown): { validate(): void };
}

const modelModules = new Map<string, Promise<Record<string, unknown>>>();

/** The kubernetes-models class of an apiVersion and kind, e.g. kubernetes-models/apps/v1 Deployment. */
async function modelClass(apiVersion: string, kind: string): Promise<ModelClass | undefined> {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  const specifier = `kubernetes-models/${group ? `${group}/` : ''}${version}`;
  if (!modelModules.has(specifier)) modelModules.set(specifier, (import(specifier) as Promise<Record<string, unknown>>).catch(() => ({})));
  return (await modelModules.get(specifier)!)[kind] as ModelClass | undefined;
}

interface Attribute {
  baseName: string;
  type: string;
}

const SCALAR_TYPES = new Set(['string', 'number', 'boolean', 'Date', 'IntOrString', 'any']);
const clientModels = k8s as unknown as Record<string, { getAttributeTypeMap?: () => Attribute[] } | undefined>;

/** Fields that the API does not know, by client-node's model of each type (V1DeploymentSpec, ...). */
function unknownFields(value: unknown, type: string, path: string, out: string[]): void {
  if (value === null || value === undefined || SCALAR_TYPES.has(type)) return;
  const array = /^Array<(.+)>$/.exec(type);
  if (array) {
    if (Array.isArray(value)) value.forEach((item, i) => unknownFields(item, array[1], `${path}/${i}`, out));
    return;
  }
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) {
    if (isObject(value)) for (const [key, item] of Object.entries(value)) unknownFields(item, map[1], `${path}/${key}`, out);
    return;
  }
  const attributes = clientModels[type]?.getAttributeTypeMap?.();
  if (!attributes) {
    out.push(`${path}: @kubernetes/client-node has no model ${type} to check the fields against`);
    return;
  }
  if (!isObject(value)) return;
  for (const [key, item] of Object.entries(value)) {
    const attribute = attributes.find((a) => a.baseName === key);
    if (!attribute) out.push(`${path || '/'}: unknown field "${key}" (${type} has ${attributes.map((a) => a.baseName).join(', ')})`);
    else unknownFields(item, attribute.type, `${path}/${key}`, out);
  }
}

const EGRESS_NAMES = new Set(['cluster', 'controlplane', 'etcd']);
const EGRESS_PROTOCOLS = new Set(['GRPC', 'HTTPConnect', 'Direct']);

/** kube-apiserver's EgressSelectorConfiguration (apiserver.k8s.io/v1beta1), which no API serves. */
function egressSelectorProblems(o: KubeObject): string[] {
  const problems: string[] = [];
  const keys = (value: unknown, path: string, allowed: string[]) => {
    if (!isObject(value)) return problems.push(`${path} is not an object`) && false;
    for (const key of Object.keys(value)) if (!allowed.includes(key)) problems.push(`${path}: unknown field "${key}"`);
    return true;
  };
  keys(o, '', ['apiVersion', 'kind', 'egressSelections']);
  const selections = Array.isArray(o.egressSelections) ? o.egressSelections as unknown[] : [];
  if (selections.length === 0) problems.push('egressSelections is empty');
  selections.forEach((selection, i) => {
    const path = `/egressSelections/${i}`;
    if (!keys(selection, path, ['name', 'connection'])) return;
    const { name, connection } = selection as Record<string, unknown>;
    if (!EGRESS_NAMES.has(name as string)) problems.push(`${path}/name: ${String(name)} is not cluster, controlplane or etcd`);
    if (!keys(connection, `${path}/connection`, ['proxyProtocol', 'transport'])) return;
    const { proxyProtocol, transport } = connection as Record<string, unknown>;
    if (!EGRESS_PROTOCOLS.has(proxyProtocol as string)) problems.push(`${path}/connection/proxyProtocol: ${String(proxyProtocol)} is not GRPC, HTTPConnect or Direct`);
    if (proxyProtocol === 'Direct') return;
    if (!keys(transport, `${path}/connection/transport`, ['uds', 'tcp'])) return;
    const { uds, tcp } = transport as Record<string, unknown>;
    if ((uds === undefined) === (tcp === undefined)) problems.push(`${path}/connection/transport: give exactly one of uds and tcp`);
    if (uds !== undefined && keys(uds, `${path}/connection/transport/uds`, ['udsName']) && typeof (uds as Record<string, unknown>).udsName !== 'string') problems.push(`${path}/connection/transport/uds/udsName is missing`);
    if (tcp !== undefined && keys(tcp, `${path}/connection/transport/tcp`, ['url', 'tlsConfig'])) {
      const { url, tlsConfig } = tcp as Record<string, unknown>;
      if (typeof url !== 'string' || !/^https?:\/\//.test(url)) problems.push(`${path}/connection/transport/tcp/url: ${String(url)} is not an http(s) URL`);
      if (tlsConfig !== undefined) keys(tlsConfig, `${path}/connection/transport/tcp/tlsConfig`, ['caBundle', 'clientCert', 'clientKey']);
    }
  });
  return problems;
}

/** What is wrong with an object by the Kubernetes API's schema; empty when it is valid. */
async function schemaProblems(o: KubeObject): Promise<string[]> {
  if (isEgressSelector(o)) return egressSelectorProblems(o);
  const Model = await modelClass(o.apiVersion, o.kind);
  if (!Model) return [`${o.apiVersion} ${o.kind} is not a kind of the Kubernetes API (kubernetes-models has no schema for it)`];
  const problems: string[] = [];
  try {
    new Model(o).validate();
  } catch (err) {
    problems.push((err as Error).message);
  }
  const version = o.apiVersion.split('/').pop()!;
  unknownFields(o, `V${version.slice(1)}${o.kind}`, '', problems);
  return problems;
}

async function allSchemaProblems(manifests: Manifest[]): Promise<string[]> {
  const problems: string[] = [];
  for (const m of manifests.filter((x) => !isKustomizeConfig(x.object))) {
    for (const problem of await schemaProblems(m.object)) problems.push(`${nameOf(m)}: ${problem}`);
  }
  return problems;
}

// ---- pods, containers, flags --------------------------------------------------------------------

interface Pod {
  owner: string;
  spec: V1PodSpec;
  labels: Record<string, string>;
  namespace?: string;
}

function podsOf(manifests: Manifest[]): Pod[] {
  const pods: Pod[] = [];
  for (const m of manifests) {
    const o = m.object;
    if (o.kind === 'Pod') pods.push({ owner: nameOf(m), spec: (o as unknown as { spec: V1PodSpec }).spec, labels: o.metadata?.labels ?? {}, namespace: o.metadata?.namespace });
    const template = (o as { spec?: { template?: { metadata?: { labels?: Record<string, string> }; spec?: V1PodSpec } } }).spec?.template;
    if (['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job'].includes(o.kind) && template?.spec) {
      pods.push({ owner: nameOf(m), spec: template.spec, labels: template.metadata?.labels ?? {}, namespace: o.metadata?.namespace });
    }
  }
  return pods;
}

function containersOf(pod: Pod): V1Container[] {
  return [...(pod.spec.initContainers ?? []), ...pod.spec.containers];
}

/** Seconds of a duration flag's value (30s, 2m, 500ms), as the binaries parse it. */
function seconds(value: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value);
  if (!match) return NaN;
  return Number(match[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[match[2] ?? 's']!;
}

/**
 * A rolling update lets open connections finish: every server and agent sets --drain-timeout,
 * and its pod's terminationGracePeriodSeconds covers preStop, the drain and 5 s of margin
 * (Kubernetes kills the container at the end of the grace period, connections and all).
 */
function shutdownProblems(manifests: Manifest[]): string[] {
  const problems: string[] = [];
  for (const pod of podsOf(manifests)) {
    for (const c of pod.spec.containers) {
      if (!['tunnel-server', 'tunnel-agent'].includes(c.command?.[0] ?? '')) continue;
      const at = `${pod.owner} container ${c.name}`;
      const drain = flag(c, 'drain-timeout');
      if (drain === undefined) {
        problems.push(`${at}: no --drain-timeout`);
        continue;
      }
      const preStop = c.lifecycle?.preStop?.sleep?.seconds ?? 0;
      const grace = pod.spec.terminationGracePeriodSeconds ?? 30;
      if (preStop + seconds(drain) + 5 > grace) problems.push(`${at}: preStop ${preStop}s + --drain-timeout=${drain} + 5s margin is more than terminationGracePeriodSeconds ${grace}`);
    }
  }
  return problems;
}

/** Hardening every pod must have, and what the cluster-wide grants must never include. */
function securityProblems(manifests: Manifest[]): string[] {
  const problems: string[] = [];
  for (const pod of podsOf(manifests)) {
    for (const field of ['hostNetwork', 'hostPID', 'hostIPC'] as const) if (pod.spec[field]) problems.push(`${pod.owner}: ${field} is on`);
    const podContext = pod.spec.securityContext ?? {};
    for (const c of containersOf(pod)) {
      const at = `${pod.owner} container ${c.name}`;
      const context = c.securityContext ?? {};
      if (context.privileged) problems.push(`${at}: privileged`);
      if ((context.runAsNonRoot ?? podContext.runAsNonRoot) !== true) problems.push(`${at}: runAsNonRoot is not true`);
      if ((context.runAsUser ?? podContext.runAsUser) !== RUN_AS_USER) problems.push(`${at}: runAsUser is not ${RUN_AS_USER}`);
      if (context.readOnlyRootFilesystem !== true) problems.push(`${at}: readOnlyRootFilesystem is not true`);
      if (context.allowPrivilegeEscalation !== false) problems.push(`${at}: allowPrivilegeEscalation is not false`);
      if (!context.capabilities?.drop?.includes('ALL')) problems.push(`${at}: capabilities do not drop ALL`);
      if ((context.capabilities?.add ?? []).length > 0) problems.push(`${at}: adds capabilities ${context.capabilities!.add!.join(', ')}`);
      if ((context.seccompProfile ?? podContext.seccompProfile)?.type !== 'RuntimeDefault') problems.push(`${at}: seccompProfile is not RuntimeDefault`);
      if (c.image !== IMAGE) problems.push(`${at}: image ${c.image} is not ${IMAGE} (package.json's version)`);
    }
  }
  for (const m of manifests) {
    if (JSON.stringify(m.object).includes('system:masters')) problems.push(`${nameOf(m)}: names system:masters`);
    const rules = ['ClusterRole', 'Role'].includes(m.object.kind) ? (m.object as unknown as V1ClusterRole).rules ?? [] : [];
    for (const rule of rules) {
      for (const field of ['verbs', 'apiGroups', 'resources'] as const) if (rule[field]?.includes('*')) problems.push(`${nameOf(m)}: a rule grants every one of its ${field} ("*")`);
    }
    const roleRef = m.object.kind.endsWith('RoleBinding') ? (m.object as unknown as V1RoleBinding).roleRef : undefined;
    if (roleRef && ['cluster-admin', 'admin', 'edit'].includes(roleRef.name)) problems.push(`${nameOf(m)}: binds the built-in role ${roleRef.name}`);
  }
  return problems;
}

/** A container's flags: name to values, in order (repeatable flags keep every value). */
function flagsOf(c: V1Container): Map<string, string[]> {
  const flags = new Map<string, string[]>();
  for (const arg of [...(c.command ?? []).slice(1), ...(c.args ?? [])]) {
    const match = /^--([^=]+)(?:=(.*))?$/.exec(arg);
    if (!match) continue;
    flags.set(match[1], [...(flags.get(match[1]) ?? []), match[2] ?? 'true']);
  }
  return flags;
}

function flag(c: V1Container, name: string): string | undefined {
  return flagsOf(c).get(name)?.at(-1);
}

const helpOutput = new Map<string, Promise<Set<string>>>();

/** The flags a binary lists in its --help. */
function helpFlags(binary: string): Promise<Set<string>> {
  if (!helpOutput.has(binary)) {
    helpOutput.set(binary, execFileAsync(process.execPath, [join(BIN, `${binary}.js`), '--help']).then(({ stdout }) => new Set([...stdout.matchAll(/^\s+--([a-z0-9][a-z0-9-]*)/gm)].map((m) => m[1]))));
  }
  return helpOutput.get(binary)!;
}

async function flagProblems(manifests: Manifest[]): Promise<string[]> {
  const problems: string[] = [];
  for (const pod of podsOf(manifests)) {
    for (const c of containersOf(pod).filter((x) => x.image === IMAGE)) {
      const binary = c.command?.[0];
      if (!binary || !(binary in pkg.bin)) {
        problems.push(`${pod.owner} container ${c.name}: command ${JSON.stringify(c.command)} does not start with a binary of package.json bin (${Object.keys(pkg.bin).join(', ')})`);
        continue;
      }
      const known = await helpFlags(binary);
      for (const name of flagsOf(c).keys()) if (!known.has(name)) problems.push(`${pod.owner} container ${c.name}: ${binary} --help does not list --${name}`);
    }
  }
  return problems;
}

/** Flags whose path the binary writes to (a file or socket in it, or the directory itself). */
const WRITTEN_PATHS = new Set(['state-dir', 'cert-dir', 'uds-name', 'http-connect-uds']);
/** Port flags and the container port name each one must be. */
const PORT_FLAGS: Record<string, string> = { 'agent-port': 'agent', 'server-port': 'http-connect', 'reverse-proxy-port': 'reverse-proxy', 'health-port': 'health' };

function probePort(probe: V1Probe | undefined, c: V1Container): number | undefined {
  const port = probe?.httpGet?.port;
  if (typeof port === 'number') return port;
  return c.ports?.find((p) => p.name === port)?.containerPort;
}

/** Paths and ports of the containers' flags against their mounts, container ports, probes and Services. */
function podProblems(manifests: Manifest[]): string[] {
  const problems: string[] = [];
  for (const pod of podsOf(manifests)) {
    for (const c of containersOf(pod).filter((x) => x.image === IMAGE)) {
      const at = `${pod.owner} container ${c.name}`;
      for (const [name, values] of flagsOf(c)) {
        for (const value of values.filter((v) => v.startsWith('/'))) {
          const mount = (c.volumeMounts ?? []).filter((vm) => value === vm.mountPath || value.startsWith(`${vm.mountPath}/`)).sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
          if (!mount) {
            problems.push(`${at}: --${name}=${value} is on the read-only root file system; mount a volume there`);
            continue;
          }
          const volume = pod.spec.volumes?.find((v) => v.name === mount.name);
          if (!volume) {
            problems.push(`${at}: the mount of --${name}=${value} names a volume ${mount.name} the pod does not have`);
            continue;
          }
          if (WRITTEN_PATHS.has(name) && (mount.readOnly || !volume.emptyDir)) problems.push(`${at}: --${name}=${value} is written, but its volume ${volume.name} is not a writable emptyDir`);
          const key = posix.relative(mount.mountPath, value);
          const source = volume.secret ? find<V1Secret>(manifests, 'Secret', volume.secret.secretName ?? '', pod.namespace)
            : volume.configMap ? find<V1ConfigMap>(manifests, 'ConfigMap', volume.configMap.name ?? '', pod.namespace) : undefined;
          if ((volume.secret || volume.configMap) && !source) problems.push(`${at}: --${name}=${value} comes from ${volume.secret ? `Secret ${volume.secret.secretName}` : `ConfigMap ${volume.configMap!.name}`}, which is not among the manifests`);
          if (source) {
            const keys = Object.keys({ ...(source as V1Secret).data, ...(source as V1Secret).stringData });
            if (!keys.includes(key)) problems.push(`${at}: --${name}=${value} needs the key ${key} in ${source.kind} ${source.metadata?.name}, which has ${keys.join(', ') || 'none'}`);
          }
        }
      }
      const ports = c.ports ?? [];
      for (const [name, portName] of Object.entries(PORT_FLAGS)) {
        const value = flag(c, name);
        if (value === undefined || value === 'off') continue;
        const port = ports.find((p) => p.name === portName);
        if (port?.containerPort !== Number(value)) problems.push(`${at}: --${name}=${value}, but its container port ${portName} is ${port?.containerPort ?? 'missing'}`);
      }
      for (const value of flagsOf(c).get('push-listen') ?? []) {
        const port = Number(/:(\d+)=/.exec(value)?.[1]);
        if (!ports.some((p) => p.containerPort === port)) problems.push(`${at}: --push-listen=${value} listens on a port the container does not declare`);
      }
      const health = Number(flag(c, 'health-port') ?? (c.command?.[0] === 'tunnel-agent' ? 8093 : 8092));
      for (const [kind, probe] of [['liveness', c.livenessProbe], ['readiness', c.readinessProbe]] as const) {
        if (!probe) problems.push(`${at}: no ${kind} probe`);
        else if (probe.httpGet?.path !== '/healthz' || probePort(probe, c) !== health) problems.push(`${at}: the ${kind} probe is not GET /healthz on the health port ${health}`);
      }
    }
  }
  for (const service of objectsOf<V1Service>(manifests, 'Service')) {
    const selector = service.spec?.selector ?? {};
    const pods = podsOf(manifests).filter((p) => p.namespace === service.metadata?.namespace && Object.entries(selector).every(([k, v]) => p.labels[k] === v));
    if (pods.length === 0) problems.push(`Service ${service.metadata?.name}: selects no pod of the manifests`);
    for (const port of service.spec?.ports ?? []) {
      const target = port.targetPort ?? port.port;
      const served = pods.some((p) => containersOf(p).some((c) => (c.ports ?? []).some((cp) => cp.name === target || cp.containerPort === target)));
      if (pods.length > 0 && !served) problems.push(`Service ${service.metadata?.name}: port ${port.name} targets ${String(target)}, which no selected container declares`);
    }
  }
  return problems;
}

// ---- RBAC ---------------------------------------------------------------------------------------

interface Account {
  name: string;
  namespace: string;
}

function permissionsOfRule(rule: Pick<V1PolicyRule, 'verbs' | 'apiGroups' | 'resources' | 'resourceNames' | 'nonResourceURLs'>, scopes: string[]): string[] {
  const out: string[] = [];
  for (const verb of rule.verbs) {
    for (const url of rule.nonResourceURLs ?? []) out.push(`${verb} url ${url}`);
    for (const group of rule.apiGroups ?? []) {
      for (const resource of rule.resources ?? []) {
        for (const name of rule.resourceNames ?? [undefined]) {
          for (const scope of scopes) out.push(`${verb} ${group || 'core'}/${resource}${name ? `[${name}]` : ''} in ${scope}`);
        }
      }
    }
  }
  return out;
}

/** Every permission an account gets from the manifests' bindings, one line each, "*" for every namespace. */
function grantsOf(manifests: Manifest[], account: Account): string[] {
  const out = new Set<string>();
  for (const kind of ['ClusterRoleBinding', 'RoleBinding']) {
    for (const binding of objectsOf<V1RoleBinding>(manifests, kind)) {
      const namespace = binding.metadata?.namespace;
      const bound = (binding.subjects ?? []).some((s) => s.kind === 'ServiceAccount' && s.name === account.name && (s.namespace ?? namespace) === account.namespace);
      if (!bound) continue;
      const role = binding.roleRef.kind === 'ClusterRole'
        ? find<V1ClusterRole>(manifests, 'ClusterRole', binding.roleRef.name)
        : find<V1Role>(manifests, 'Role', binding.roleRef.name, namespace);
      if (!role) {
        out.add(`${kind} ${binding.metadata?.name} refers to ${binding.roleRef.kind} ${binding.roleRef.name}, which is missing`);
        continue;
      }
      for (const rule of role.rules ?? []) for (const p of permissionsOfRule(rule, [kind === 'ClusterRoleBinding' ? '*' : namespace!])) out.add(p);
    }
  }
  return [...out].sort();
}

function expectedGrants(rules: PolicyRule[]): string[] {
  return [...new Set(rules.flatMap((r) => permissionsOfRule(r, r.namespaces ?? ['*'])))].sort();
}

/** The test hub's rules as a hub in another namespace, with other signers, has them. */
function rulesFor(rules: PolicyRule[], namespace: string, signerDomain: string): PolicyRule[] {
  return rules.map((r) => ({
    ...r,
    namespaces: r.namespaces?.map((ns) => (ns === HUB_NAMESPACE ? namespace : ns)),
    resourceNames: r.resourceNames?.map((n) => n.replace(`${SIGNER_DOMAIN}/`, `${signerDomain}/`)),
  }));
}

// ---- kustomize ----------------------------------------------------------------------------------

type Build = { manifests: Manifest[] } | { skipped: string };
const builds = new Map<string, Promise<Build>>();

/** `kubectl kustomize DIR`, or why it could not run. */
function kustomize(dir: string): Promise<Build> {
  if (!builds.has(dir)) {
    builds.set(dir, execFileAsync('kubectl', ['kustomize', dir], { maxBuffer: 16 * 1024 * 1024 }).then(
      ({ stdout }) => ({ manifests: parseManifests(stdout, `kubectl kustomize ${relative(ROOT, dir) || dir}`) }),
      (err: NodeJS.ErrnoException & { stderr?: string }) => {
        if (err.code === 'ENOENT') return { skipped: 'kubectl is not installed, so the kustomizations were not built' };
        throw new Error(`kubectl kustomize ${relative(ROOT, dir)} failed: ${err.stderr || err.message}`);
      },
    ));
  }
  return builds.get(dir)!;
}

const kustomizationDirs = rawFiles.filter((f) => /\/kustomization\.ya?ml$/.test(f)).map((f) => dirname(f));

/** A temporary overlay of `resources` with `components` (kustomize takes relative paths only). */
function overlay(resources: string[], components: string[]): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-kustomize-'));
  const list = (paths: string[]) => paths.map((p) => `- ${relative(dir, join(K8S, p))}`).join('\n');
  writeFileSync(join(dir, 'kustomization.yaml'), `apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n${list(resources)}\ncomponents:\n${list(components)}\n`);
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

function container(manifests: Manifest[], deployment: string): V1Container {
  const found = find<V1Deployment>(manifests, 'Deployment', deployment);
  if (!found) throw new Error(`no Deployment ${deployment} in ${manifests[0]?.source ?? 'the manifests'}`);
  return found.spec!.template.spec!.containers[0];
}

/** An agent's flags against its hub's objects: address, port, namespace, signers, bootstrap account. */
function topologyProblems(hub: Manifest[], cluster: Manifest[]): string[] {
  const problems: string[] = [];
  const serverDeployment = find<V1Deployment>(hub, 'Deployment', 'tunnel-server')!;
  const namespace = serverDeployment.metadata!.namespace!;
  const server = container(hub, 'tunnel-server');
  const agent = container(cluster, 'tunnel-agent');
  const clusterName = flag(agent, 'cluster-name')!;
  const expect = (what: string, actual: string | undefined, expected: string | undefined) => {
    if (actual !== expected) problems.push(`${what} is ${actual ?? 'unset'}, expected ${expected ?? 'unset'}`);
  };
  expect('the server\'s --namespace', flag(server, 'namespace'), namespace);
  const [serviceNamespace, serviceName] = (flag(server, 'server-service') ?? '').split('/');
  const service = find<V1Service>(hub, 'Service', serviceName, serviceNamespace);
  if (!service) return [...problems, `the server's --server-service=${flag(server, 'server-service')} is not among the hub's objects`];
  const address = service.metadata?.annotations?.['tunnel.tkestack.io/public-address'];
  const port = (name: string) => String(service.spec?.ports?.find((p) => p.name === name)?.port);
  expect('the agent\'s --tunnelserver-addr', flag(agent, 'tunnelserver-addr'), `${address}:${port('agent')}`);
  expect('the agent\'s --apiserver-addr (the server\'s reverse proxy)', flag(agent, 'apiserver-addr'), `${address}:${port('reverse-proxy')}`);
  expect('the agent\'s --namespace (the hub namespace of the tunnel CA)', flag(agent, 'namespace'), namespace);
  expect('the agent\'s --signer-domain', flag(agent, 'signer-domain') ?? SIGNER_DOMAIN, flag(server, 'signer-domain') ?? SIGNER_DOMAIN);
  if (!(flagsOf(agent).get('host-alias') ?? []).some((alias) => alias.startsWith(`${clusterName}=`))) problems.push(`the agent has no --host-alias for its cluster name ${clusterName}`);
  const account = agentAccount(clusterName);
  if (!find(hub, 'ServiceAccount', account, namespace)) problems.push(`the hub has no bootstrap ServiceAccount ${namespace}/${account} for cluster ${clusterName}`);
  const token = objectsOf<V1Secret>(hub, 'Secret').find((s) => s.type === 'kubernetes.io/service-account-token' && s.metadata?.namespace === namespace && s.metadata.annotations?.['kubernetes.io/service-account.name'] === account);
  if (!token) problems.push(`the hub has no token Secret for ${namespace}/${account}`);
  const hubTrust = agent.volumeMounts?.find((m) => flag(agent, 'hub-ca-cert')?.startsWith(`${m.mountPath}/`));
  if (!hubTrust) problems.push('the agent\'s --hub-ca-cert is not mounted');
  return problems;
}

// ---- tests --------------------------------------------------------------------------------------

test('every YAML file under k8s/ parses, and every object in it is valid against the Kubernetes API schema', async (t) => {
  t.true(raw.length > 20, `k8s/ holds the manifests (found ${raw.length} objects in ${rawFiles.length} files)`);
  const kinds = new Set(apiObjects(raw).map((m) => m.object.kind));
  for (const kind of ['Namespace', 'ServiceAccount', 'ClusterRole', 'ClusterRoleBinding', 'Role', 'RoleBinding', 'Secret', 'ConfigMap', 'Deployment', 'Service', 'PodDisruptionBudget']) t.true(kinds.has(kind), `some manifest is a ${kind}`);
  t.deepEqual(await allSchemaProblems(raw), []);
});

test('the schema check refuses a misspelt field and a wrong type', async (t) => {
  const original = find<V1Deployment>(raw, 'Deployment', 'tunnel-server')!;
  t.deepEqual(await schemaProblems(original), [], 'the hub Deployment itself is valid');
  const misspelt = structuredClone(original);
  const misspeltContainer = misspelt.spec!.template.spec!.containers[0] as V1Container & Record<string, unknown>;
  misspeltContainer.comand = misspeltContainer.command;
  delete misspeltContainer.command;
  const refused = await schemaProblems(misspelt);
  t.is(refused.length, 1, refused.join('\n'));
  t.regex(refused[0], /^\/spec\/template\/spec\/containers\/0: unknown field "comand" \(V1Container has .*\bcommand\b/);
  const wrongType = structuredClone(original);
  (wrongType.spec as unknown as Record<string, unknown>).replicas = 'one';
  (wrongType.spec!.template.spec!.containers[0].ports![0] as unknown as Record<string, unknown>).containerPort = '10261';
  const problems = await schemaProblems(wrongType);
  t.is(problems.length, 1, problems.join('\n'));
  t.regex(problems[0], /spec\/replicas must be integer/);
  t.regex(problems[0], /containers\/0\/ports\/0\/containerPort must be integer/);
  t.deepEqual(await schemaProblems({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' }, data: { a: 1 } }), ['data/data/a must be string']);
  t.regex((await schemaProblems({ apiVersion: 'example.com/v1', kind: 'Widget' }))[0], /not a kind of the Kubernetes API/);
});

test('no host network, no privileged container, no system:masters, no wildcard grant; every container is hardened and runs our image', (t) => {
  t.deepEqual(securityProblems(raw), []);
  for (const file of rawFiles) t.false(readFileSync(file, 'utf8').includes('system:masters'), `${relative(ROOT, file)} names system:masters`);
  const pods = podsOf(raw);
  t.deepEqual(pods.map((p) => p.owner).sort(), ['k8s/hub/deployment.yaml: Deployment tunnel-system/tunnel-server', 'k8s/managed/deployment.yaml: Deployment tunnel-system/tunnel-agent']);
  const weakened = structuredClone(find<V1Deployment>(raw, 'Deployment', 'tunnel-server')!);
  const spec = weakened.spec!.template.spec!;
  spec.hostNetwork = true;
  spec.containers[0].securityContext = { privileged: true, capabilities: { add: ['NET_ADMIN'] } };
  spec.securityContext = {};
  spec.containers[0].image = 'tkestack/tke-anp-tunnel:latest';
  const found = securityProblems([{ source: 'weakened', object: weakened }]);
  for (const expected of ['hostNetwork is on', 'privileged', 'runAsNonRoot is not true', 'runAsUser is not 65532', 'readOnlyRootFilesystem is not true', 'allowPrivilegeEscalation is not false', 'capabilities do not drop ALL', 'adds capabilities NET_ADMIN', 'seccompProfile is not RuntimeDefault', `image tkestack/tke-anp-tunnel:latest is not ${IMAGE}`]) {
    t.true(found.some((p) => p.includes(`: ${expected}`)), `the check finds "${expected}" in ${found.join('; ')}`);
  }
  const admin = { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding', metadata: { name: 'x' }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' }, subjects: [{ kind: 'Group', name: 'system:masters' }] };
  t.deepEqual(securityProblems([{ source: 'admin', object: admin }]), ['admin: ClusterRoleBinding x: names system:masters', 'admin: ClusterRoleBinding x: binds the built-in role cluster-admin']);
});

test('every container runs a binary of package.json bin with flags that its --help lists', async (t) => {
  for (const pod of podsOf(raw)) for (const c of containersOf(pod)) t.true(c.command?.length === 1, `${pod.owner}: the command is the binary alone, the flags are args`);
  t.deepEqual(await flagProblems(raw), [], 'flags missing from --help are being added to the binaries, or the manifests name a flag that does not exist');
  const server = container(raw, 'tunnel-server');
  t.deepEqual(server.args, [
    '--cert-source=kube', '--namespace=tunnel-system', '--server-service=tunnel-system/tunnel-server', '--bind-address=0.0.0.0',
    '--agent-port=10262', '--server-port=10263', '--reverse-proxy-port=10261', '--health-bind-address=0.0.0.0', '--health-port=8092',
    '--state-dir=/var/lib/tunnel', '--server-ca-cert=/etc/tunnel/clients-ca/ca.crt', '--uds-name=/run/tunnel/grpc.sock', '--drain-timeout=30s', '--v=2',
  ]);
  const misnamed = structuredClone(find<V1Deployment>(raw, 'Deployment', 'tunnel-server')!);
  misnamed.spec!.template.spec!.containers[0].args = ['--no-such-flag=1'];
  t.deepEqual(await flagProblems([{ source: 'x', object: misnamed }]), ['x: Deployment tunnel-system/tunnel-server container tunnel-server: tunnel-server --help does not list --no-such-flag']);
});

test('paths in the flags are mounted (files of Secrets and ConfigMaps are their keys), ports and probes match the flags, Services reach their pods', (t) => {
  t.deepEqual(podProblems(raw), []);
  const broken = structuredClone(find<V1Deployment>(raw, 'Deployment', 'tunnel-agent')!);
  const c = broken.spec!.template.spec!.containers[0];
  c.args = c.args!.map((a) => a.replace('/etc/tunnel/bootstrap/token', '/etc/tunnel/bootstrap/tokn').replace('--health-port=8093', '--health-port=9000').replace('/var/lib/tunnel', '/var/lib/elsewhere'));
  const secret = find<V1Secret>(raw, 'Secret', 'tunnel-agent-bootstrap')!;
  t.deepEqual(podProblems([{ source: 'x', object: broken }, { source: 'y', object: secret }]), [
    'x: Deployment tunnel-system/tunnel-agent container tunnel-agent: --bootstrap-token-file=/etc/tunnel/bootstrap/tokn needs the key tokn in Secret tunnel-agent-bootstrap, which has token, ca.crt',
    'x: Deployment tunnel-system/tunnel-agent container tunnel-agent: --state-dir=/var/lib/elsewhere is on the read-only root file system; mount a volume there',
    'x: Deployment tunnel-system/tunnel-agent container tunnel-agent: --health-port=9000, but its container port health is 8093',
    'x: Deployment tunnel-system/tunnel-agent container tunnel-agent: the liveness probe is not GET /healthz on the health port 9000',
    'x: Deployment tunnel-system/tunnel-agent container tunnel-agent: the readiness probe is not GET /healthz on the health port 9000',
  ]);
});

test('every server and agent drains on SIGTERM within its pod\'s grace period', (t) => {
  t.deepEqual(shutdownProblems(raw), []);
  const broken = structuredClone(find<V1Deployment>(raw, 'Deployment', 'tunnel-server')!);
  broken.spec!.template.spec!.terminationGracePeriodSeconds = 30;
  t.deepEqual(shutdownProblems([{ source: 'x', object: broken }]), [
    'x: Deployment tunnel-system/tunnel-server container tunnel-server: preStop 5s + --drain-timeout=30s + 5s margin is more than terminationGracePeriodSeconds 30',
  ]);
});

test('the hub grants the server exactly SERVER_RULES and each bootstrap account exactly AGENT_RULES (harness/hub.ts)', (t) => {
  const hub = raw.filter((m) => m.source.startsWith('k8s/hub/') || m.source === 'k8s/one-to-many/hub/agent-cluster-b.yaml');
  t.deepEqual(grantsOf(hub, { name: SERVER_ACCOUNT, namespace: HUB_NAMESPACE }), expectedGrants(SERVER_RULES), 'the server\'s grants');
  for (const cluster of ['cluster-a', 'cluster-b']) t.deepEqual(grantsOf(hub, { name: agentAccount(cluster), namespace: HUB_NAMESPACE }), expectedGrants(AGENT_RULES), `${cluster}'s bootstrap grants`);
  const broadened = structuredClone(hub);
  const role = broadened.find((m) => m.object.kind === 'Role' && m.object.metadata?.name === 'tunnel-server')!;
  (role.object as V1Role).rules![0].verbs.push('delete');
  t.notDeepEqual(grantsOf(broadened, { name: SERVER_ACCOUNT, namespace: HUB_NAMESPACE }), expectedGrants(SERVER_RULES), 'an extra verb shows');
});

test('every kustomization builds with kubectl kustomize, and what it builds passes the schema, security, flag and pod checks', async (t) => {
  t.true(kustomizationDirs.length >= 9, `k8s/ has the kustomizations (found ${kustomizationDirs.map((d) => relative(K8S, d)).join(', ')})`);
  const tkestack = overlay(['managed'], ['components/tkestack']);
  try {
    for (const dir of [...kustomizationDirs, tkestack.dir]) {
      const build = await kustomize(dir);
      if ('skipped' in build) {
        t.log(build.skipped);
        t.pass();
        return;
      }
      const what = relative(K8S, dir);
      t.true(build.manifests.length > 0, `${what} builds objects`);
      t.deepEqual(await allSchemaProblems(build.manifests), [], `${what}: schema`);
      t.deepEqual(securityProblems(build.manifests), [], `${what}: security`);
      t.deepEqual(podProblems(build.manifests), [], `${what}: paths, ports and probes`);
      t.deepEqual(shutdownProblems(build.manifests), [], `${what}: drain within the grace period`);
      t.deepEqual(await flagProblems(build.manifests), [], `${what}: flags missing from --help are being added to the binaries, or the manifests name a flag that does not exist`);
    }
  } finally {
    tkestack.cleanup();
  }
});

const TOPOLOGIES = [
  { hub: 'hub', clusters: ['managed'], namespace: HUB_NAMESPACE, signerDomain: SIGNER_DOMAIN },
  { hub: 'one-to-many/hub', clusters: ['one-to-many/cluster-a', 'one-to-many/cluster-b'], namespace: HUB_NAMESPACE, signerDomain: SIGNER_DOMAIN },
  { hub: 'one-to-one/hub', clusters: ['one-to-one/cluster-a'], namespace: 'tunnel-cluster-a', signerDomain: 'cluster-a.tunnel.tkestack.io' },
];

test('each topology hangs together: its agents reach their own server, namespace, signers and bootstrap account, and the hub grants exactly the rules', async (t) => {
  for (const topology of TOPOLOGIES) {
    const hub = await kustomize(join(K8S, topology.hub));
    if ('skipped' in hub) {
      t.log(hub.skipped);
      t.pass();
      return;
    }
    const server = container(hub.manifests, 'tunnel-server');
    t.is(flag(server, 'signer-domain') ?? SIGNER_DOMAIN, topology.signerDomain, `${topology.hub}: the server's signers`);
    t.deepEqual(grantsOf(hub.manifests, { name: SERVER_ACCOUNT, namespace: topology.namespace }), expectedGrants(rulesFor(SERVER_RULES, topology.namespace, topology.signerDomain)), `${topology.hub}: the server's grants`);
    const names = new Set<string>();
    for (const clusterDir of topology.clusters) {
      const cluster = await kustomize(join(K8S, clusterDir));
      if ('skipped' in cluster) continue;
      const name = flag(container(cluster.manifests, 'tunnel-agent'), 'cluster-name')!;
      names.add(name);
      t.deepEqual(topologyProblems(hub.manifests, cluster.manifests), [], `${clusterDir} against ${topology.hub}`);
      t.deepEqual(grantsOf(hub.manifests, { name: agentAccount(name), namespace: topology.namespace }), expectedGrants(rulesFor(AGENT_RULES, topology.namespace, topology.signerDomain)), `${topology.hub}: ${name}'s bootstrap grants`);
    }
    t.is(names.size, topology.clusters.length, `${topology.hub}: each agent serves its own cluster`);
  }
  const oneToOne = await kustomize(join(K8S, 'one-to-one/hub'));
  const oneToMany = await kustomize(join(K8S, 'one-to-many/hub'));
  if ('manifests' in oneToOne && 'manifests' in oneToMany) {
    const clusterScoped = (b: Manifest[]) => new Set(b.filter((m) => m.object.kind.startsWith('Cluster') || m.object.kind === 'Namespace').map((m) => `${m.object.kind}/${m.object.metadata?.name}`));
    const shared = [...clusterScoped(oneToOne.manifests)].filter((n) => clusterScoped(oneToMany.manifests).has(n));
    t.deepEqual(shared, [], 'a one-to-one server shares no cluster-scoped object with the one-to-many hub, so both fit in one hub');
  }
});

test('the tkestack component gives the agent --hook-provider=tkestack and a long-lived token to report, and the hub side lets the bootstrap account write ClusterCredentials', async (t) => {
  const managed = overlay(['managed'], ['components/tkestack']);
  const hubSide = overlay(['hub'], ['components/tkestack/hub']);
  try {
    const agentBuild = await kustomize(managed.dir);
    const hubBuild = await kustomize(hubSide.dir);
    if ('skipped' in agentBuild || 'skipped' in hubBuild) {
      t.log('skipped' in agentBuild ? agentBuild.skipped : (hubBuild as { skipped: string }).skipped);
      t.pass();
      return;
    }
    const agent = container(agentBuild.manifests, 'tunnel-agent');
    t.is(flag(agent, 'hook-provider'), 'tkestack');
    t.deepEqual(agent.args!.slice(0, -1), container(raw, 'tunnel-agent').args, 'the base arguments stay as they are');
    const pod = find<V1Deployment>(agentBuild.manifests, 'Deployment', 'tunnel-agent')!.spec!.template.spec!;
    const mount = agent.volumeMounts?.find((m) => m.mountPath === '/var/run/secrets/kubernetes.io/serviceaccount');
    t.is(pod.volumes?.find((v) => v.name === mount?.name)?.secret?.secretName, 'tunnel-agent-token', 'the pod\'s service account directory is the long-lived token, which the hook reports');
    t.false(pod.automountServiceAccountToken, 'no projected token on the same path');
    const token = find<V1Secret>(agentBuild.manifests, 'Secret', 'tunnel-agent-token', HUB_NAMESPACE);
    t.is(token?.type, 'kubernetes.io/service-account-token');
    t.is(token?.metadata?.annotations?.['kubernetes.io/service-account.name'], 'tunnel-agent', 'the token is tunnel-agent\'s');
    t.deepEqual(grantsOf(agentBuild.manifests, { name: 'tunnel-agent', namespace: HUB_NAMESPACE }), expectedGrants([
      { verbs: ['get', 'list', 'watch'], apiGroups: [''], resources: ['nodes', 'namespaces'] },
    ]), 'tkestack reads nodes and namespaces with the reported token, and nothing more is granted');
    const clusterCredentials: PolicyRule = { verbs: ['get', 'list', 'create', 'update'], apiGroups: ['platform.tkestack.io'], resources: ['clustercredentials'] };
    t.deepEqual(grantsOf(hubBuild.manifests, { name: agentAccount('cluster-a'), namespace: HUB_NAMESPACE }), expectedGrants([...AGENT_RULES, clusterCredentials]));
    t.deepEqual(grantsOf(hubBuild.manifests, { name: SERVER_ACCOUNT, namespace: HUB_NAMESPACE }), expectedGrants(SERVER_RULES), 'the server gets nothing more');
    t.true(existsSync(join(K8S, 'components/tkestack/hub/clustercredentials-rbac.yaml')), 'the hub side is a file that can be applied by itself');
  } finally {
    managed.cleanup();
    hubSide.cleanup();
  }
});
