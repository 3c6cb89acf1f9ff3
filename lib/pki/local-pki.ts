/**
 * A self-contained PKI in the state directory, so the tunnel runs with mTLS out of the box
 * (demo, development, single-host tests) without an operator creating certificates first.
 * The server and agent binaries may start at the same moment on one state directory, so all
 * changes happen under an exclusive lock file and every file is replaced atomically.
 */
import { randomBytes, X509Certificate, createPrivateKey } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { logger } from '../observe/log.js';
import {
  certificateExpiry, certificateSans, createCa, describeCertificate, issueCertificate, normalizeIp,
  type CertificateAndKey, type CertificateSans, type CertificateSummary, type CertificateUsage,
} from './certificates.js';
import {
  AGENT_ORGANIZATION, CLIENT_COMMON_NAME, CLIENT_ORGANIZATION, SERVER_COMMON_NAME, SERVER_ORGANIZATION, agentCommonName, checkClusterName,
} from './identities.js';

const PKI_SUBDIR = 'pki';
const LOCK_FILE = '.lock';
const CA_COMMON_NAME = 'tke-anp-tunnel local CA';
const AGENTS_SUBDIR = 'agents';
const SERVER_DEFAULT_DNS = ['localhost'];
const SERVER_DEFAULT_IPS = ['127.0.0.1', '::1'];
const LOCK_RETRY_MS = 25;
/** A lock older than this was left by a crashed process: creating the PKI takes about a second. */
const STALE_LOCK_MS = 30_000;
const LOCK_TIMEOUT_MS = 2 * STALE_LOCK_MS;
/** Leaf certificates this close to expiry are reissued, so a long-running setup never lapses. */
const RENEW_BEFORE_MS = 30 * 86_400_000;
const DIR_MODE = 0o700;
const KEY_MODE = 0o600;
const CERT_MODE = 0o644;

const log = logger('pki');

/**
 * The local PKI's files. Agents' certificates are per cluster (an agent may serve only the
 * cluster its certificate names), in agents/<cluster>.crt; see localAgentCertificate.
 */
export interface LocalPkiPaths {
  dir: string;
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

export interface EnsureLocalPkiOptions {
  stateDir: string;
  /** Extra DNS SANs for the server certificate (localhost is always included). */
  dnsNames?: string[];
  /** Extra IP SANs for the server certificate (127.0.0.1 and ::1 are always included). */
  ips?: string[];
}

export type IssueKind = 'client' | 'agent' | 'server';

export interface IssueOptions {
  kind: IssueKind;
  commonName: string;
  dnsNames?: string[];
  ips?: string[];
  outDir: string;
  days?: number;
}

export interface IssuedPaths {
  cert: string;
  key: string;
}

/** One certificate of the local PKI as tunnel-pki show reports it. */
export interface LocalCertificateSummary extends CertificateSummary {
  path: string;
}

/** Profile of each leaf certificate in the local PKI. */
interface LeafProfile {
  commonName: string;
  organization: string[];
  usage: CertificateUsage;
  certPath: string;
  keyPath: string;
}

/** Profile of each kind tunnel-pki issue can produce; server matches the local server cert. */
const ISSUE_USAGE: Record<IssueKind, CertificateUsage> = { client: 'client', agent: 'client', server: 'both' };
const ISSUE_ORGANIZATION: Record<IssueKind, string> = { client: CLIENT_ORGANIZATION, agent: AGENT_ORGANIZATION, server: SERVER_ORGANIZATION };

/** $TUNNEL_STATE_DIR, else the XDG state directory of this user. */
export function defaultStateDir(): string {
  if (process.env.TUNNEL_STATE_DIR) return process.env.TUNNEL_STATE_DIR;
  const base = process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state');
  return join(base, 'tke-anp-tunnel');
}

/** Where the local PKI of stateDir lives; the files may not exist yet. */
export function localPkiPaths(stateDir: string): LocalPkiPaths {
  const dir = join(stateDir, PKI_SUBDIR);
  const file = (name: string) => join(dir, name);
  return {
    dir,
    caCert: file('ca.crt'), caKey: file('ca.key'),
    serverCert: file('server.crt'), serverKey: file('server.key'),
    clientCert: file('client.crt'), clientKey: file('client.key'),
  };
}

/**
 * Creates the local PKI on first use and returns its paths; afterwards the files are reused
 * byte for byte. Only what is missing, invalid, close to expiry, or (for the server) lacking a
 * requested SAN is (re)issued.
 */
export async function ensureLocalPki(options: EnsureLocalPkiOptions): Promise<LocalPkiPaths> {
  const paths = localPkiPaths(options.stateDir);
  await makePrivateDir(options.stateDir, paths.dir);
  await withLock(join(paths.dir, LOCK_FILE), async () => {
    const ca = await ensureCa(paths);
    const serverSans = {
      dnsNames: unique([...(options.dnsNames ?? []), ...SERVER_DEFAULT_DNS]),
      ips: unique([...(options.ips ?? []), ...SERVER_DEFAULT_IPS].map(normalizeIp)),
    };
    await ensureLeaf(ca, { commonName: SERVER_COMMON_NAME, organization: [SERVER_ORGANIZATION], usage: 'both', certPath: paths.serverCert, keyPath: paths.serverKey }, serverSans);
    await ensureLeaf(ca, { commonName: CLIENT_COMMON_NAME, organization: [CLIENT_ORGANIZATION], usage: 'client', certPath: paths.clientCert, keyPath: paths.clientKey });
  });
  return paths;
}

/** Where the local PKI keeps the certificate of the agent for `cluster`. */
export function localAgentPaths(stateDir: string, cluster: string): IssuedPaths {
  const dir = join(localPkiPaths(stateDir).dir, AGENTS_SUBDIR);
  return { cert: join(dir, `${cluster}.crt`), key: join(dir, `${cluster}.key`) };
}

/**
 * The certificate of the agent for `cluster` (CN tunnel:agent:<cluster>, O tunnel:agents),
 * issued from the local CA on first use and reissued as the server's is.
 */
export async function localAgentCertificate(stateDir: string, cluster: string): Promise<IssuedPaths> {
  checkClusterName(cluster);
  const paths = await ensureLocalPki({ stateDir });
  const out = localAgentPaths(stateDir, cluster);
  await fs.mkdir(join(paths.dir, AGENTS_SUBDIR), { recursive: true, mode: DIR_MODE });
  await withLock(join(paths.dir, LOCK_FILE), async () => {
    const ca = await readPair(paths.caCert, paths.caKey);
    await ensureLeaf(ca, { commonName: agentCommonName(cluster), organization: [AGENT_ORGANIZATION], usage: 'client', certPath: out.cert, keyPath: out.key });
  });
  return out;
}

/**
 * Issues an extra certificate from the local CA (creating the PKI if needed) and writes
 * <outDir>/<name>.crt and .key. The subject carries the kind's role: an agent's `name` is its
 * cluster (CN tunnel:agent:<name>, O tunnel:agents); servers get O tunnel:server, clients
 * O tunnel:clients.
 */
export async function issueFromLocalCa(stateDir: string, options: IssueOptions): Promise<IssuedPaths> {
  if (/[/\\]|^\.\.?$/.test(options.commonName)) {
    throw new Error(`common name "${options.commonName}" is used as the file name in ${options.outDir}: give a name without '/' or '\\'`);
  }
  const paths = await ensureLocalPki({ stateDir });
  const ca = await readPair(paths.caCert, paths.caKey);
  if (options.kind === 'agent') checkClusterName(options.commonName);
  const issued = issueCertificate(ca, {
    commonName: options.kind === 'agent' ? agentCommonName(options.commonName) : options.commonName,
    organization: [ISSUE_ORGANIZATION[options.kind]],
    usage: ISSUE_USAGE[options.kind],
    dnsNames: options.dnsNames,
    ips: options.ips,
    days: options.days,
  });
  await fs.mkdir(options.outDir, { recursive: true, mode: DIR_MODE });
  const out = { cert: join(options.outDir, `${options.commonName}.crt`), key: join(options.outDir, `${options.commonName}.key`) };
  await writeFileAtomic(out.key, issued.keyPem, KEY_MODE);
  await writeFileAtomic(out.cert, issued.certPem, CERT_MODE);
  log.info('issued certificate from the local CA', { kind: options.kind, cn: options.commonName, cert: out.cert });
  return out;
}

/** Describes the CA and leaf certificates of an existing local PKI; never creates one. */
export async function describeLocalPki(stateDir: string): Promise<LocalCertificateSummary[]> {
  const paths = localPkiPaths(stateDir);
  const summaries: LocalCertificateSummary[] = [];
  const agents = await fs.readdir(join(paths.dir, AGENTS_SUBDIR)).catch(() => [] as string[]);
  const agentCerts = agents.filter((name) => name.endsWith('.crt')).sort().map((name) => join(paths.dir, AGENTS_SUBDIR, name));
  for (const path of [paths.caCert, paths.serverCert, paths.clientCert, ...agentCerts]) {
    const pem = await fs.readFile(path).catch((err: NodeJS.ErrnoException) => {
      throw new Error(`cannot read ${path}: ${err.code ?? err.message}. Run 'tunnel-pki init' to create the local PKI in ${stateDir}.`);
    });
    summaries.push({ path, ...describeCertificate(pem) });
  }
  return summaries;
}

/** SHA-256 fingerprint of the local CA, for operators pinning or comparing it across hosts. */
export async function localCaFingerprint(paths: LocalPkiPaths): Promise<string> {
  return describeCertificate(await fs.readFile(paths.caCert)).fingerprint256;
}

/** Loads the CA, or creates it when neither file exists. A half-present CA is an operator problem. */
async function ensureCa(paths: LocalPkiPaths): Promise<CertificateAndKey> {
  const [hasCert, hasKey] = await Promise.all([exists(paths.caCert), exists(paths.caKey)]);
  if (hasCert && hasKey) return readPair(paths.caCert, paths.caKey);
  if (hasCert !== hasKey) {
    const [present, missing] = hasCert ? [paths.caCert, paths.caKey] : [paths.caKey, paths.caCert];
    throw new Error(`local CA is incomplete: ${present} exists but ${missing} does not. Restore ${missing}, or delete ${present} to create a new CA (all certificates issued by the old CA must then be reissued).`);
  }
  const ca = createCa(CA_COMMON_NAME);
  await writeFileAtomic(paths.caKey, ca.keyPem, KEY_MODE);
  await writeFileAtomic(paths.caCert, ca.certPem, CERT_MODE);
  log.info('created local CA', { cert: paths.caCert });
  return ca;
}

/** Keeps the leaf certificate if it is still good, otherwise issues it again and says why. */
async function ensureLeaf(ca: CertificateAndKey, profile: LeafProfile, wantedSans?: CertificateSans): Promise<void> {
  const current = await readPair(profile.certPath, profile.keyPath).catch(() => undefined);
  const reason = current ? reissueReason(ca, current, profile, wantedSans) : 'missing';
  if (reason === undefined) return;
  const sans = wantedSans && withExistingSans(current, wantedSans);
  const issued = issueCertificate(ca, { commonName: profile.commonName, organization: profile.organization, usage: profile.usage, ...sans });
  await writeFileAtomic(profile.keyPath, issued.keyPem, KEY_MODE);
  await writeFileAtomic(profile.certPath, issued.certPem, CERT_MODE);
  log.info(current ? 'reissued local certificate' : 'issued local certificate', { cert: profile.certPath, reason });
}

/**
 * The wanted SANs plus those the current certificate already has, so processes started with
 * different SAN flags on one state directory don't take turns dropping each other's names.
 */
function withExistingSans(current: CertificateAndKey | undefined, wanted: CertificateSans): CertificateSans {
  let have: CertificateSans = { dnsNames: [], ips: [] };
  try {
    if (current) have = certificateSans(current.certPem);
  } catch {
    // Unreadable certificate: nothing worth keeping.
  }
  return { dnsNames: unique([...have.dnsNames, ...wanted.dnsNames]), ips: unique([...have.ips, ...wanted.ips]) };
}

/** Why an existing leaf must be reissued, or undefined when it is fine. */
function reissueReason(ca: CertificateAndKey, leaf: CertificateAndKey, profile: LeafProfile, wantedSans?: CertificateSans): string | undefined {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(leaf.certPem);
    if (!cert.checkPrivateKey(createPrivateKey(leaf.keyPem))) return 'key does not match certificate';
  } catch {
    return 'unreadable certificate or key';
  }
  const caCert = new X509Certificate(ca.certPem);
  if (!cert.checkIssued(caCert) || !cert.verify(caCert.publicKey)) return 'not issued by the current local CA';
  if (certificateExpiry(leaf.certPem).getTime() - Date.now() < RENEW_BEFORE_MS) return 'expires soon';
  if (cert.publicKey.asymmetricKeyType === 'rsa') return 'RSA key (local leaves are ECDSA P-256 now: cheaper handshakes)';
  const subject = subjectOf(cert);
  if (subject.commonName !== profile.commonName || subject.organization.join(',') !== profile.organization.join(',')) {
    return `subject ${[`CN=${subject.commonName}`, ...subject.organization.map((o) => `O=${o}`)].join(', ')} is not this role's (certificates carry their role now)`;
  }
  if (!wantedSans) return undefined;
  const have = certificateSans(leaf.certPem);
  const missing = [
    ...wantedSans.dnsNames.filter((name) => !have.dnsNames.includes(name)),
    ...wantedSans.ips.filter((ip) => !have.ips.includes(ip)),
  ];
  return missing.length > 0 ? `lacks SAN ${missing.join(',')}` : undefined;
}

/** CN and O entries of a certificate's subject (node prints one attribute per line). */
function subjectOf(cert: X509Certificate): { commonName: string; organization: string[] } {
  const lines = cert.subject.split('\n');
  return {
    commonName: lines.find((l) => l.startsWith('CN='))?.slice(3) ?? '',
    organization: lines.filter((l) => l.startsWith('O=')).map((l) => l.slice(2)),
  };
}

async function readPair(certPath: string, keyPath: string): Promise<CertificateAndKey> {
  const [certPem, keyPem] = await Promise.all([fs.readFile(certPath, 'utf8'), fs.readFile(keyPath, 'utf8')]);
  return { certPem, keyPem };
}

async function makePrivateDir(stateDir: string, pkiDir: string): Promise<void> {
  await fs.mkdir(stateDir, { recursive: true, mode: DIR_MODE });
  await fs.mkdir(pkiDir, { recursive: true, mode: DIR_MODE });
  await fs.chmod(pkiDir, DIR_MODE);
}

/** Runs fn while holding an exclusive lock file; other processes wait (and break stale locks). */
async function withLock<T>(lockPath: string, fn: () => Promise<T>): Promise<T> {
  const handle = await acquireLock(lockPath);
  try {
    return await fn();
  } finally {
    await handle.close();
    await fs.rm(lockPath, { force: true });
  }
}

async function acquireLock(lockPath: string): Promise<fs.FileHandle> {
  const deadline = Date.now() + LOCK_TIMEOUT_MS;
  for (;;) {
    try {
      const handle = await fs.open(lockPath, 'wx', KEY_MODE);
      await handle.writeFile(`${process.pid}\n`);
      return handle;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    await breakStaleLock(lockPath);
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for lock ${lockPath}: another process keeps changing the local PKI. If no tunnel process is running, delete the lock file and retry.`);
    }
    await sleep(LOCK_RETRY_MS);
  }
}

/**
 * Removes a lock left behind by a crashed process. The lock is first renamed aside, so two
 * waiters cannot both break it; if what was moved turns out to be a fresh lock another
 * process just took, it is put back.
 */
async function breakStaleLock(lockPath: string): Promise<void> {
  const stat = await fs.stat(lockPath).catch(() => undefined);
  if (!stat || Date.now() - stat.mtimeMs < STALE_LOCK_MS) return;
  const aside = `${lockPath}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
  if (!(await fs.rename(lockPath, aside).then(() => true, () => false))) return;
  const moved = await fs.stat(aside);
  if (Date.now() - moved.mtimeMs < STALE_LOCK_MS) {
    await fs.link(aside, lockPath).catch(() => undefined);
  } else {
    log.warn('removed stale lock left by a crashed process', { lock: lockPath, ageSeconds: Math.round((Date.now() - moved.mtimeMs) / 1000) });
  }
  await fs.rm(aside, { force: true });
}

/** Writes a temp file next to path, flushes it, and renames it over path: readers see old or new, never half. */
async function writeFileAtomic(path: string, data: string, mode: number): Promise<void> {
  const tmp = `${path}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`;
  try {
    const handle = await fs.open(tmp, 'wx', mode);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(tmp, path);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}

async function exists(path: string): Promise<boolean> {
  return fs.access(path).then(() => true, () => false);
}

function unique<T>(items: T[]): T[] {
  return [...new Set(items)];
}
