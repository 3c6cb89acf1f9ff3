/**
 * Where the rest of the project gets its TLS key, certificate and CA bundle. Dialers (the
 * agent, the clients) ask current() for every new connection, and the server's listeners
 * follow `changes` (lib/transport/tls-reload.ts), so a renewed certificate or a new CA bundle
 * is used from the next handshake on while existing tunnels stay up. The material comes
 * from PEM files here, or from the Kubernetes CSR API (lib/kube/certificate-manager.ts).
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { promises as fs, type Stats } from 'node:fs';
import { Subject, map, merge, type Observable } from 'rxjs';
import { logger } from '../observe/log.js';
import { localAgentCertificate, localPkiPaths, type LocalPkiPaths } from './local-pki.js';

/** Off by default: files given on the command line usually don't change under a running process. */
const DEFAULT_WATCH_INTERVAL_MS = 0;
const ERRNO_TEXT: Record<string, string> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EISDIR: 'is a directory',
  ENOTDIR: 'a parent is not a directory',
};
const LOCAL_PKI_ROLES = {
  server: 'tunnel-server (local PKI)',
  agent: 'tunnel-agent (local PKI)',
  client: 'tunnel-client (local PKI)',
} as const;

const log = logger('tls');

export interface TlsMaterial {
  key: Buffer;
  cert: Buffer;
  ca: Buffer;
}

export interface TlsSource {
  /** The material to use for the next handshake; always valid once the source is loaded (see `ready`). */
  current(): TlsMaterial;
  /** Settles once current() has material, for a source that is still getting its first (deferredTlsSource). */
  readonly ready?: Promise<void>;
  /** Emits after a reload picked up new, valid bytes. */
  readonly changes: Observable<TlsMaterial>;
  /** Stops watching and completes `changes`. */
  close(): void;
}

export interface TlsFilePaths {
  key: string;
  cert: string;
  ca: string;
  /** Who uses the material, for error messages, e.g. 'tunnel-server agent listener'. */
  role: string;
}

export interface FileTlsSourceOptions {
  /** Poll the files this often and reload when they change; 0 turns watching off. */
  watchIntervalMs?: number;
}

/** TLS material read from three PEM files, optionally reloaded when the files change. */
export class FileTlsSource implements TlsSource {
  readonly changes: Observable<TlsMaterial>;
  private readonly subject = new Subject<TlsMaterial>();
  private timer: NodeJS.Timeout | undefined;
  private fileStamp = '';
  private polling = false;

  private constructor(private readonly paths: TlsFilePaths, private material: TlsMaterial) {
    this.changes = this.subject.asObservable();
  }

  /** Reads and validates the files; throws an error that tells the operator what to fix. */
  static async load(paths: TlsFilePaths, options: FileTlsSourceOptions = {}): Promise<FileTlsSource> {
    // Stamp before reading: a change racing with the read is then seen by the first poll.
    const stamp = await stampFiles(paths).catch(() => '');
    const source = new FileTlsSource(paths, await readMaterial(paths));
    source.fileStamp = stamp;
    const interval = options.watchIntervalMs ?? DEFAULT_WATCH_INTERVAL_MS;
    if (interval > 0) {
      source.timer = setInterval(() => void source.poll(), interval);
      source.timer.unref();
    }
    return source;
  }

  current(): TlsMaterial {
    return this.material;
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.subject.complete();
  }

  /**
   * Reloads when any file's inode, size or mtime changed. A bad new set (half-written, key
   * and certificate from different rotations) is logged once and ignored; the next change of
   * the files triggers another attempt.
   */
  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      const stamp = await stampFiles(this.paths).catch(() => undefined);
      if (stamp === undefined || stamp === this.fileStamp) return;
      this.fileStamp = stamp;
      const next = await readMaterial(this.paths);
      const closed = this.timer === undefined;
      if (closed || sameMaterial(next, this.material)) return;
      this.material = next;
      log.info('reloaded TLS material', { role: this.paths.role, cert: this.paths.cert });
      this.subject.next(next);
    } catch (err) {
      log.warn('ignoring changed TLS files, keeping the previous certificate', { role: this.paths.role, error: err as Error });
    } finally {
      this.polling = false;
    }
  }
}

/** A TlsSource for the server or client role of the local PKI (see ensureLocalPki). */
export function localPkiTlsSource(
  paths: LocalPkiPaths,
  role: 'server' | 'client',
  options?: FileTlsSourceOptions,
): Promise<FileTlsSource> {
  const files = {
    server: { cert: paths.serverCert, key: paths.serverKey },
    client: { cert: paths.clientCert, key: paths.clientKey },
  }[role];
  return FileTlsSource.load({ ...files, ca: paths.caCert, role: LOCAL_PKI_ROLES[role] }, options);
}

/** A TlsSource for the agent of `cluster`, from the local PKI (see localAgentCertificate). */
export async function localAgentTlsSource(stateDir: string, cluster: string, options?: FileTlsSourceOptions): Promise<FileTlsSource> {
  const agent = await localAgentCertificate(stateDir, cluster);
  return FileTlsSource.load({ ...agent, ca: localPkiPaths(stateDir).caCert, role: `${LOCAL_PKI_ROLES.agent} of cluster ${cluster}` }, options);
}

/** Reads the three files and checks they parse and that the key belongs to the certificate. */
async function readMaterial(paths: TlsFilePaths): Promise<TlsMaterial> {
  const [key, cert, ca] = await Promise.all([
    readPem(paths.key, 'private key', paths.role),
    readPem(paths.cert, 'certificate', paths.role),
    readPem(paths.ca, 'CA certificate', paths.role),
  ]);
  const x509 = parseCertificate(cert, paths.cert, paths.role);
  parseCertificate(ca, paths.ca, paths.role);
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    throw new Error(`${paths.key} is not a usable PEM private key for ${paths.role}: ${(err as Error).message}. Give the unencrypted PEM key that belongs to certificate ${paths.cert}.`, { cause: err });
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new Error(`private key ${paths.key} does not match certificate ${paths.cert} for ${paths.role}. Give the key that was created together with this certificate.`);
  }
  if (new Date(x509.validTo).getTime() < Date.now()) {
    log.warn('certificate has expired; peers will refuse it', { role: paths.role, cert: paths.cert, notAfter: x509.validTo });
  }
  return { key, cert, ca };
}

async function readPem(path: string, what: string, role: string): Promise<Buffer> {
  try {
    return await fs.readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const reason = code ? `${code} (${ERRNO_TEXT[code] ?? (err as Error).message})` : (err as Error).message;
    throw new Error(`cannot read ${what} ${path} for ${role}: ${reason}. Give an existing PEM file, or omit the certificate flags to use the local PKI in the state directory.`, { cause: err });
  }
}

function parseCertificate(pem: Buffer, path: string, role: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (err) {
    throw new Error(`${path} is not a PEM certificate for ${role}: ${(err as Error).message}. Give a file that starts with -----BEGIN CERTIFICATE-----.`, { cause: err });
  }
}

/** A string that changes whenever any of the files is replaced or rewritten. */
async function stampFiles(paths: TlsFilePaths): Promise<string> {
  const stats = await Promise.all([paths.key, paths.cert, paths.ca].map((path) => fs.stat(path)));
  return stats.map((s: Stats) => `${s.ino}:${s.size}:${s.mtimeMs}`).join('|');
}

function sameMaterial(a: TlsMaterial, b: TlsMaterial): boolean {
  return a.key.equals(b.key) && a.cert.equals(b.cert) && a.ca.equals(b.ca);
}

/** Trusted CAs alone, for a listener or dialer that trusts other CAs than its identity's. */
export interface CaBundleSource {
  current(): Buffer;
  readonly changes: Observable<Buffer>;
  close(): void;
}

/** A CA bundle read from a PEM file (checked to hold at least one certificate). */
export async function fileCaBundle(path: string, role: string): Promise<CaBundleSource> {
  const pem = await readPem(path, 'CA certificate', role);
  parseCertificate(pem, path, role);
  const changes = new Subject<Buffer>();
  return { current: () => pem, changes, close: () => changes.complete() };
}

/** The key and certificate of `identity` with the CAs of `trust`, each followed as it changes. */
export function withTrust(identity: TlsSource, trust: CaBundleSource): TlsSource {
  const current = (): TlsMaterial => ({ ...identity.current(), ca: trust.current() });
  return {
    current,
    changes: merge(identity.changes, trust.changes).pipe(map(() => current())),
    close: () => trust.close(),
  };
}

/**
 * A TlsSource that is still on its way, such as a certificate that waits for approval: a
 * role can start (its health and metrics endpoints answer) and waits on `ready` before its
 * first handshake. current() throws until then; a failure to get one rejects `ready`.
 */
export function deferredTlsSource(coming: Promise<TlsSource>): TlsSource & { readonly ready: Promise<void> } {
  let source: TlsSource | undefined;
  const changes = new Subject<TlsMaterial>();
  const ready = coming.then((arrived) => {
    source = arrived;
    arrived.changes.subscribe(changes);
  });
  ready.catch(() => undefined);
  return {
    ready,
    changes,
    current: () => {
      if (!source) throw new Error('no certificate yet: it is still being requested');
      return source.current();
    },
    close: () => {
      source?.close();
      void coming.then((arrived) => arrived.close(), () => undefined);
    },
  };
}
