/**
 * Per-cluster client authorization (`--client-authorization FILE`): which frontend clients
 * may reach which cluster. The file is JSON:
 *
 *     { "clusters": {
 *         "cluster-a": [ { "cn": "kube-apiserver" }, { "o": "tunnel:operators" }, { "uds": true } ],
 *         "*": [ { "uri": "spiffe://hub/ns/ops/sa/admin" } ] } }
 *
 * A dial's cluster is the host of its address (`cluster-a` of `cluster-a:443`, the name
 * the destHost strategy routes by). A client may dial it when one rule under that name or
 * under "*" matches the client. A rule matches a certificate when every field it gives
 * does: `cn` is the subject's CN, `o` one of its O values, `dns` / `uri` one of its DNS /
 * URI subject alternative names. Clients of the unix sockets have no certificate: only
 * `{ "uds": true }` matches them (whoever may open the socket file). A cluster that no
 * entry names, and no "*" entry, is refused to everyone.
 */
import { readFile } from 'node:fs/promises';
import { describePeer, type PeerIdentity } from '../transport/peer-identity.js';
import { dialHost } from '../wire/agent-identifiers.js';
import type { ClientPolicy } from './client-policy.js';

/** One rule of a cluster's list: the fields a client must match (all of them). */
export interface ClientRule {
  cn?: string;
  o?: string;
  dns?: string;
  uri?: string;
  /** Matches clients of the unix sockets (and nothing else). */
  uds?: true;
}

export interface ClientAuthorization {
  /** Where the rules came from, for messages. */
  source: string;
  clusters: ReadonlyMap<string, readonly ClientRule[]>;
}

/** The cluster key whose rules apply to every cluster. */
export const ANY_CLUSTER = '*';

const CERTIFICATE_FIELDS = ['cn', 'o', 'dns', 'uri'] as const;
const CLUSTER_KEY = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?$/;

/** An invalid authorization file: the message names the file and the entry. */
export class AuthorizationFileError extends Error {
  override name = 'AuthorizationFileError';
}

function parseRule(value: unknown, where: string): ClientRule {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new AuthorizationFileError(`${where} is not an object: give e.g. { "cn": "kube-apiserver" }, { "o": "tunnel:operators" }, { "dns": "NAME" }, { "uri": "URI" } or { "uds": true }`);
  }
  const rule: ClientRule = {};
  for (const [key, field] of Object.entries(value as Record<string, unknown>)) {
    if (key === 'uds') {
      if (field !== true) throw new AuthorizationFileError(`${where}.uds must be true (it matches the clients of the unix sockets)`);
      rule.uds = true;
    } else if ((CERTIFICATE_FIELDS as readonly string[]).includes(key)) {
      if (typeof field !== 'string' || field === '') throw new AuthorizationFileError(`${where}.${key} must be a non-empty string`);
      rule[key as (typeof CERTIFICATE_FIELDS)[number]] = field;
    } else {
      throw new AuthorizationFileError(`${where} has an unknown field "${key}": use cn, o, dns, uri (all that are given must match a certificate) or uds`);
    }
  }
  const certificateFields = CERTIFICATE_FIELDS.filter((f) => rule[f] !== undefined);
  if (rule.uds && certificateFields.length > 0) {
    throw new AuthorizationFileError(`${where} mixes uds with ${certificateFields.join(', ')}: unix-socket clients have no certificate, so give them a rule of their own`);
  }
  if (!rule.uds && certificateFields.length === 0) {
    throw new AuthorizationFileError(`${where} is empty: give at least one of cn, o, dns, uri, or uds`);
  }
  return rule;
}

/** Checks and reads the file's JSON text; errors name the entry. */
export function parseClientAuthorization(text: string, source: string): ClientAuthorization {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (err) {
    throw new AuthorizationFileError(`${source} is not JSON: ${(err as Error).message}`);
  }
  if (typeof document !== 'object' || document === null || Array.isArray(document)) {
    throw new AuthorizationFileError(`${source} must hold an object with "clusters": { "<cluster>": [rules], "*": [rules] }`);
  }
  const extra = Object.keys(document).filter((k) => k !== 'clusters');
  if (extra.length > 0) throw new AuthorizationFileError(`${source} has an unknown field "${extra[0]}": only "clusters" is read`);
  const clustersValue = (document as { clusters?: unknown }).clusters;
  if (typeof clustersValue !== 'object' || clustersValue === null || Array.isArray(clustersValue)) {
    throw new AuthorizationFileError(`${source}: "clusters" must be an object of cluster name -> list of rules`);
  }
  const clusters = new Map<string, ClientRule[]>();
  for (const [cluster, rules] of Object.entries(clustersValue as Record<string, unknown>)) {
    const where = `${source}: clusters["${cluster}"]`;
    if (cluster !== ANY_CLUSTER && !CLUSTER_KEY.test(cluster)) {
      throw new AuthorizationFileError(`${where}: "${cluster}" is not a cluster name (the host of a dial address) or "${ANY_CLUSTER}"`);
    }
    if (!Array.isArray(rules)) throw new AuthorizationFileError(`${where} must be a list of rules`);
    clusters.set(cluster, rules.map((rule, i) => parseRule(rule, `${where}[${i}]`)));
  }
  return { source, clusters };
}

/** Reads and checks `path` (at start: an invalid file stops the server with the entry at fault). */
export async function loadClientAuthorization(path: string): Promise<ClientAuthorization> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new AuthorizationFileError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parseClientAuthorization(text, path);
}

export function ruleMatches(rule: ClientRule, peer: PeerIdentity | undefined): boolean {
  if (rule.uds) return peer === undefined;
  if (!peer) return false;
  return (rule.cn === undefined || rule.cn === peer.commonName)
    && (rule.o === undefined || peer.organization.includes(rule.o))
    && (rule.dns === undefined || (peer.dnsNames ?? []).includes(rule.dns))
    && (rule.uri === undefined || (peer.uris ?? []).includes(rule.uri));
}

/** Who the client is, for refusals: its certificate, or the unix socket it came on. */
export function describeClient(peer: PeerIdentity | undefined): string {
  if (!peer) return 'a unix-socket client (no certificate)';
  const sans = [...(peer.dnsNames ?? []).map((n) => `DNS:${n}`), ...(peer.uris ?? []).map((u) => `URI:${u}`)];
  return `the client certificate (${describePeer(peer)}${sans.length > 0 ? `; ${sans.join(', ')}` : ''})`;
}

/** The ClientPolicy of an authorization file. */
export function authorizeClients(authorization: ClientAuthorization): ClientPolicy {
  const everywhere = authorization.clusters.get(ANY_CLUSTER) ?? [];
  return (peer, address) => {
    const cluster = dialHost(address);
    const rules = [...(authorization.clusters.get(cluster) ?? []), ...everywhere];
    if (rules.some((rule) => ruleMatches(rule, peer))) return undefined;
    const why = rules.length === 0 ? `no entry of --client-authorization names cluster "${cluster}"` : `no rule of cluster "${cluster}" in --client-authorization matches it`;
    return `${describeClient(peer)} may not reach cluster "${cluster}": ${why}`;
  };
}
