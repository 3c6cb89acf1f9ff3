/**
 * The reverse proxy's routes: a path prefix of the tunnel server's reverse-proxy port (or a
 * name that an agent's push listener is bound to) mapped to an upstream in the hub, with who
 * may use it. Three routes are built in: `apiserver` (`/`, the hub's API server), `norm`
 * (`/v1/norm`, an upstream of the operator's choice) and `healthz` (`/v1/healthz`, answered
 * by the tunnel server itself). A routes file adds routes and changes the built-in ones:
 *
 * ```json
 * {
 *   "routes": [
 *     { "name": "norm", "upstream": "https://norm.tke.svc:443", "caFile": "/etc/norm/ca.crt", "open": false, "clusters": ["cluster-a"] },
 *     { "name": "registry", "prefix": "/v2", "upstream": "https://registry.hub.svc", "stripPrefix": false }
 *   ],
 *   "clusters": { "cluster-b": ["apiserver", "healthz"] }
 * }
 * ```
 *
 * A route is open (any caller, with a certificate or without) or restricted to the clusters
 * it lists; `clusters` at the top restricts a cluster to the routes named there, open ones
 * included. The caller's cluster comes from its client certificate, or for push connections
 * from the agent that carried them.
 */
import { readFileSync } from 'node:fs';

export const BUILTIN_ROUTES = { apiserver: '/', norm: '/v1/norm', healthz: '/v1/healthz' } as const;
export type BuiltinRouteName = keyof typeof BUILTIN_ROUTES;

const ROUTE_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const ROUTE_KEYS = new Set(['name', 'prefix', 'upstream', 'caFile', 'serverName', 'open', 'clusters', 'stripPrefix']);

export interface Upstream {
  url: URL;
  /** PEM CA bundle that the upstream's certificate must chain to (https); Node's roots when absent. */
  ca?: Buffer;
  /** Name the upstream's certificate must hold, when not the URL's host. */
  serverName?: string;
}

export interface Route {
  name: string;
  /** `/` or a path without a trailing slash; a request matches on whole segments. */
  prefix: string;
  /** Where requests go; absent for a route the server answers itself (healthz), or one with no upstream configured. */
  upstream?: Upstream;
  /** Answered by the tunnel server itself. */
  local?: 'healthz';
  /** Whether the prefix is taken off the path before it goes upstream (default true). */
  stripPrefix: boolean;
  /** Any caller may use it; otherwise only the clusters listed. */
  open: boolean;
  clusters: string[];
}

export interface RouteTable {
  routes: Route[];
  /** Clusters restricted to some routes (by name). */
  clusterRoutes: Map<string, Set<string>>;
  /** Built-in routes left out for want of an upstream, with the flag that gives one. */
  unconfigured: string[];
}

/** Paths under this prefix belong to the tunnel server's own routes, never to the API server's. */
const RESERVED_PREFIX = '/v1';
const UPSTREAM_FLAGS: Record<string, string> = { apiserver: '--hub-apiserver or --kubeconfig', norm: '--norm-upstream' };

/** What the caller of a request is, as far as the reverse proxy can tell. */
export interface Caller {
  /** The managed cluster, from a verified agent certificate or the agent that pushed the connection. */
  cluster?: string;
  /** The client certificate's subject, or how the connection came, for logs and refusals. */
  subject: string;
  /** A client certificate that did not verify, with the reason: such a caller is refused everything. */
  untrusted?: string;
}

export interface BuiltinUpstreams {
  apiserver?: Upstream;
  norm?: Upstream;
}

/** The built-in routes with their upstreams, changed and extended by the routes file (if any). */
export function routeTable(builtins: BuiltinUpstreams, file?: string): RouteTable {
  let routes: Route[] = [
    { name: 'apiserver', prefix: BUILTIN_ROUTES.apiserver, upstream: builtins.apiserver, stripPrefix: false, open: true, clusters: [] },
    { name: 'norm', prefix: BUILTIN_ROUTES.norm, upstream: builtins.norm, stripPrefix: true, open: true, clusters: [] },
    { name: 'healthz', prefix: BUILTIN_ROUTES.healthz, local: 'healthz', stripPrefix: true, open: true, clusters: [] },
  ];
  const clusterRoutes = new Map<string, Set<string>>();
  if (file !== undefined) applyRoutesFile(routes, clusterRoutes, file);
  const unconfigured = routes.filter((r) => !r.local && !r.upstream).map((r) => `${r.name} (${r.prefix}, ${UPSTREAM_FLAGS[r.name]})`);
  routes = routes.filter((r) => r.local || r.upstream);
  const prefixes = new Map<string, string>();
  for (const route of routes) {
    const other = prefixes.get(route.prefix);
    if (other) throw new Error(`routes ${other} and ${route.name} both claim the prefix ${route.prefix}: give one of them another prefix`);
    prefixes.set(route.prefix, route.name);
  }
  for (const [cluster, names] of clusterRoutes) {
    for (const name of names) {
      if (!routes.some((r) => r.name === name) && !(name in BUILTIN_ROUTES)) throw new Error(`${file}: clusters.${cluster} names route "${name}", which does not exist (routes: ${routes.map((r) => r.name).join(', ')})`);
    }
  }
  // Longest prefix first, so the first match is the most specific.
  routes.sort((a, b) => b.prefix.length - a.prefix.length);
  return { routes, clusterRoutes, unconfigured };
}

function applyRoutesFile(routes: Route[], clusterRoutes: Map<string, Set<string>>, file: string): void {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new Error(`cannot read the routes file ${file}: ${reason}`, { cause: err });
  }
  if (!isObject(parsed)) throw new Error(`${file}: expected a JSON object with "routes" and "clusters"`);
  for (const key of Object.keys(parsed)) {
    if (key !== 'routes' && key !== 'clusters') throw new Error(`${file}: unknown key "${key}" (expected "routes" and "clusters")`);
  }
  const entries = parsed.routes ?? [];
  if (!Array.isArray(entries)) throw new Error(`${file}: "routes" must be a list`);
  entries.forEach((entry: unknown, i) => {
    const where = `${file}: routes[${i}]`;
    if (!isObject(entry)) throw new Error(`${where} must be an object`);
    for (const key of Object.keys(entry)) {
      if (!ROUTE_KEYS.has(key)) throw new Error(`${where}: unknown key "${key}" (known: ${[...ROUTE_KEYS].join(', ')})`);
    }
    const name = stringField(entry, 'name', where);
    if (name === undefined || !ROUTE_NAME.test(name)) throw new Error(`${where}: "name" must be a DNS label (lower-case letters, digits, '-')`);
    let route = routes.find((r) => r.name === name);
    if (!route) {
      const prefix = stringField(entry, 'prefix', where);
      if (prefix === undefined) throw new Error(`${where}: route ${name} needs a "prefix"`);
      route = { name, prefix: checkPrefix(prefix, where), stripPrefix: true, open: false, clusters: [] };
      routes.push(route);
    } else if (entry.prefix !== undefined) {
      route.prefix = checkPrefix(stringField(entry, 'prefix', where)!, where);
    }
    const upstream = stringField(entry, 'upstream', where);
    if (upstream !== undefined) {
      if (route.local) throw new Error(`${where}: route ${name} is answered by the tunnel server itself and takes no upstream`);
      route.upstream = { url: checkUpstreamUrl(upstream, where) };
    }
    const caFile = stringField(entry, 'caFile', where);
    const serverName = stringField(entry, 'serverName', where);
    if ((caFile !== undefined || serverName !== undefined) && !route.upstream) throw new Error(`${where}: "caFile" and "serverName" need an "upstream"`);
    if (caFile !== undefined) route.upstream!.ca = readCa(caFile, where);
    if (serverName !== undefined) route.upstream!.serverName = serverName;
    if (entry.open !== undefined) route.open = booleanField(entry, 'open', where);
    if (entry.stripPrefix !== undefined) route.stripPrefix = booleanField(entry, 'stripPrefix', where);
    if (entry.clusters !== undefined) {
      route.clusters = stringList(entry.clusters, `${where}.clusters`);
      if (entry.open === undefined) route.open = false;
    }
    if (!route.local && !route.upstream && !(name in BUILTIN_ROUTES)) throw new Error(`${where}: route ${name} needs an "upstream"`);
  });
  const clusters = parsed.clusters ?? {};
  if (!isObject(clusters)) throw new Error(`${file}: "clusters" must be an object of cluster name to route names`);
  for (const [cluster, names] of Object.entries(clusters)) clusterRoutes.set(cluster, new Set(stringList(names, `${file}: clusters.${cluster}`)));
}

/**
 * The route a request path belongs to: the longest prefix that matches whole segments. Paths
 * under /v1 that match none of the tunnel's own routes have no route (they are not the API
 * server's).
 */
export function matchRoute(table: RouteTable, path: string): Route | undefined {
  const under = (prefix: string) => prefix === '/' || path === prefix || path.startsWith(`${prefix}/`);
  const route = table.routes.find((r) => under(r.prefix));
  if (route?.prefix === '/' && under(RESERVED_PREFIX)) return undefined;
  return route;
}

export function routeNamed(table: RouteTable, name: string): Route | undefined {
  return table.routes.find((r) => r.name === name);
}

/** Why `caller` may not use `route`, or undefined when it may. */
export function routeRefusal(table: RouteTable, route: Route, caller: Caller): string | undefined {
  if (caller.untrusted) return `the client certificate was not accepted (${caller.untrusted}); present a certificate that the tunnel server's CA signed, or none for open routes`;
  const only = caller.cluster === undefined ? undefined : table.clusterRoutes.get(caller.cluster);
  if (only && !only.has(route.name)) {
    return `cluster ${caller.cluster} may use the routes ${[...only].join(', ') || '(none)'} only, not ${route.name} (${route.prefix})`;
  }
  if (route.open) return undefined;
  if (caller.cluster === undefined) {
    return `route ${route.name} (${route.prefix}) is open to the clusters ${route.clusters.join(', ') || '(none)'} only, and this caller names no cluster (${caller.subject}); use an agent certificate of an allowed cluster`;
  }
  if (!route.clusters.includes(caller.cluster)) {
    return `route ${route.name} (${route.prefix}) is open to the clusters ${route.clusters.join(', ') || '(none)'} only, not to cluster ${caller.cluster}`;
  }
  return undefined;
}

/** The upstream path of a request path under `route`, for a request that came to the route's prefix or (push) to the route itself. */
export function upstreamPath(route: Route, path: string, relative: boolean): string {
  const base = route.upstream?.url.pathname.replace(/\/$/, '') ?? '';
  let rest = path;
  if (!relative && route.stripPrefix && route.prefix !== '/') rest = path.slice(route.prefix.length);
  if (!rest.startsWith('/')) rest = `/${rest}`;
  return `${base}${rest}` || '/';
}

/** The routes, for a 404's body and the start-up log: `/ (apiserver), /v1/healthz (healthz); not configured: ...`. */
export function describeRoutes(table: RouteTable): string {
  const served = [...table.routes].reverse().map((r) => `${r.prefix} (${r.name})`).join(', ') || '(none)';
  return table.unconfigured.length > 0 ? `${served}; not configured: ${table.unconfigured.join(', ')}` : served;
}

/** The upstream of `--hub-apiserver` and the like: an http(s) URL and an optional CA file. */
export function upstreamFrom(url: string, caFile: string | undefined, what: string): Upstream {
  return { url: checkUpstreamUrl(url, what), ca: caFile === undefined ? undefined : readCa(caFile, what) };
}

function checkPrefix(prefix: string, where: string): string {
  if (!prefix.startsWith('/') || (prefix !== '/' && prefix.endsWith('/')) || /\/\.{1,2}(\/|$)|[?#\s]/.test(prefix)) {
    throw new Error(`${where}: prefix "${prefix}" must be a path that starts with / and has no trailing /, dot segments, query or spaces`);
  }
  return prefix;
}

function checkUpstreamUrl(text: string, where: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`${where}: upstream "${text}" is not a URL (e.g. https://norm.tke.svc:443)`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error(`${where}: upstream ${text} must be an http or https URL`);
  if (url.search || url.hash || url.username || url.password) throw new Error(`${where}: upstream ${text} may not carry a query, fragment or credentials`);
  return url;
}

function readCa(path: string, where: string): Buffer {
  try {
    const pem = readFileSync(path);
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM certificate in it');
    return pem;
  } catch (err) {
    throw new Error(`${where}: cannot use the CA file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function stringField(entry: Record<string, unknown>, key: string, where: string): string | undefined {
  const value = entry[key];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value === '') throw new Error(`${where}: "${key}" must be a non-empty string`);
  return value;
}

function booleanField(entry: Record<string, unknown>, key: string, where: string): boolean {
  const value = entry[key];
  if (typeof value !== 'boolean') throw new Error(`${where}: "${key}" must be true or false`);
  return value;
}

function stringList(value: unknown, where: string): string[] {
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string' || v === '')) throw new Error(`${where} must be a list of names`);
  return value as string[];
}
