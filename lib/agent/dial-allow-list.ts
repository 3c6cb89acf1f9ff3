/**
 * Which targets the agent dials for the hub (`--allow-dial`). An entry is HOST:PORT:
 *
 * - HOST is a name (`kubernetes.default`), a wildcard (`*.svc.cluster.local`: any name
 *   ending in `.svc.cluster.local`), `*` (any host), an IP address, or a CIDR
 *   (`10.0.0.0/8`; IPv6 in brackets, `[fd00::/8]:443`);
 * - PORT is a number, a range (`8000-8999`) or `*`.
 *
 * Names and wildcards match the host the dial asks for (case-insensitive, as DNS). IP
 * addresses and CIDRs match the address the agent connects to: the host itself when it is
 * an IP, else what its --host-alias or DNS gives; the agent then connects to the address it
 * checked, not to a second lookup's. With no entry every dial is allowed, as before.
 */
import { BlockList, isIP } from 'node:net';

/** A dial the allow-list refuses; its message is the DIAL_RSP error text. */
export class DialNotAllowedError extends Error {
  override name = 'DialNotAllowedError';
  readonly code = 'ERR_DIAL_NOT_ALLOWED';
}

interface PortRange {
  from: number;
  to: number;
}

type HostRule =
  | { kind: 'any' }
  | { kind: 'name'; name: string }
  | { kind: 'suffix'; suffix: string }
  | { kind: 'network'; networks: BlockList };

interface Entry {
  text: string;
  host: HostRule;
  ports: PortRange;
}

const NAME = /^[A-Za-z0-9_]([-A-Za-z0-9_.]*[A-Za-z0-9_])?$/;

function parsePorts(text: string, entry: string): PortRange {
  if (text === '*') return { from: 0, to: 65535 };
  const match = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(text);
  const from = match ? Number(match[1]) : NaN;
  const to = match?.[2] !== undefined ? Number(match[2]) : from;
  if (!match || from > 65535 || to > 65535 || to < from) {
    throw new Error(`--allow-dial=${entry}: "${text}" is not a port: give a number, a range such as 8000-8999, or *`);
  }
  return { from, to };
}

function parseHost(text: string, entry: string): HostRule {
  if (text === '*') return { kind: 'any' };
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const family = isIP(address);
  if (family !== 0) {
    const type = family === 4 ? 'ipv4' : 'ipv6';
    const bits = slash < 0 ? (family === 4 ? 32 : 128) : Number(text.slice(slash + 1));
    if (!/^\d{1,3}$/.test(slash < 0 ? String(bits) : text.slice(slash + 1)) || bits > (family === 4 ? 32 : 128)) {
      throw new Error(`--allow-dial=${entry}: "${text}" has no valid prefix length (e.g. 10.0.0.0/8)`);
    }
    const networks = new BlockList();
    networks.addSubnet(address, bits, type);
    return { kind: 'network', networks };
  }
  if (slash >= 0) throw new Error(`--allow-dial=${entry}: "${text}" is not a CIDR: the part before / must be an IP address`);
  if (text.startsWith('*.') && NAME.test(text.slice(2))) return { kind: 'suffix', suffix: text.slice(1).toLowerCase() };
  if (NAME.test(text)) return { kind: 'name', name: text.toLowerCase() };
  throw new Error(`--allow-dial=${entry}: "${text}" is not a host: give a name, *.domain, *, an IP address or a CIDR`);
}

function parseEntry(text: string): Entry {
  const bracketed = /^\[([^\]]+)\]:([^:]+)$/.exec(text);
  const colon = text.lastIndexOf(':');
  const [host, ports] = bracketed ? [bracketed[1], bracketed[2]] : colon > 0 ? [text.slice(0, colon), text.slice(colon + 1)] : [undefined, undefined];
  if (host === undefined || ports === undefined || (!bracketed && host.includes(':'))) {
    throw new Error(`--allow-dial=${text} is not HOST:PORT (e.g. 10.0.0.0/8:443, *.svc.cluster.local:*, kubernetes.default:443; IPv6 in brackets)`);
  }
  return { text, host: parseHost(host, text), ports: parsePorts(ports, text) };
}

export class DialAllowList {
  private readonly entries: Entry[];

  /** Parses `--allow-dial` values (repeatable, each also a comma-separated list); throws naming the entry at fault. */
  constructor(values: readonly string[]) {
    this.entries = values.flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean).map(parseEntry);
  }

  /** No entries: every dial is allowed. */
  get allowsEverything(): boolean {
    return this.entries.length === 0;
  }

  describe(): string {
    return this.entries.map((e) => e.text).join(',');
  }

  /** Whether a name, wildcard or `*` entry allows `host:port` as asked (no address needed). */
  allowsName(host: string, port: number): boolean {
    if (this.allowsEverything) return true;
    const name = host.toLowerCase();
    return this.entries.some((e) => inPorts(e.ports, port) && (
      e.host.kind === 'any'
      || (e.host.kind === 'name' && e.host.name === name)
      || (e.host.kind === 'suffix' && name.endsWith(e.host.suffix))
      || (e.host.kind === 'network' && isIP(host) !== 0 && inNetwork(e.host.networks, host))));
  }

  /** Whether some IP or CIDR entry covers `port`: only then is resolving the host worth it. */
  hasAddressRules(port: number): boolean {
    return this.entries.some((e) => e.host.kind === 'network' && inPorts(e.ports, port));
  }

  /** Whether an IP or CIDR entry allows connecting to `ip`:`port`. */
  allowsAddress(ip: string, port: number): boolean {
    return this.entries.some((e) => e.host.kind === 'network' && inPorts(e.ports, port) && inNetwork(e.host.networks, ip));
  }
}

function inPorts(range: PortRange, port: number): boolean {
  return port >= range.from && port <= range.to;
}

function inNetwork(networks: BlockList, ip: string): boolean {
  const family = isIP(ip);
  if (family === 0) return false;
  if (networks.check(ip, family === 4 ? 'ipv4' : 'ipv6')) return true;
  // An IPv4-mapped IPv6 address (::ffff:10.0.0.1) is its IPv4 address.
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  return mapped !== null && networks.check(mapped[1], 'ipv4');
}
