/**
 * Where a certificate manager keeps its key and certificate between runs, laid out as
 * client-go's certificate store does: `<prefix>-<timestamp>.pem` holds the certificate chain
 * and then the key (mode 0600), and `<prefix>-current.pem` is a symlink to the newest. A new
 * pair is written whole to its own file first; then a symlink `<prefix>-updated.pem` is
 * renamed over `-current.pem`, so a reader (or a restart after a crash) sees the old pair or
 * the new one, never half of either.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';

const FILE_MODE = 0o600;
const DIR_MODE = 0o700;
/** Timestamped files kept besides the current one (the previous pair, for an operator to compare). */
const KEEP_PREVIOUS = 1;

export interface StoredPair {
  /** The leaf first, then any intermediates. */
  certPem: string;
  keyPem: string;
  notBefore: Date;
  notAfter: Date;
  /** Where it was read from or written to. */
  path: string;
}

export class CertificateStore {
  constructor(readonly dir: string, readonly prefix: string) {}

  get currentPath(): string {
    return join(this.dir, `${this.prefix}-current.pem`);
  }

  /**
   * The stored pair, or why there is none usable (missing, unreadable, a key that does not
   * match, expired): the caller then requests a new certificate rather than failing.
   */
  async load(now = Date.now()): Promise<StoredPair | { unusable: string }> {
    let text: string;
    try {
      text = await fs.readFile(this.currentPath, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return { unusable: code === 'ENOENT' ? `no stored certificate at ${this.currentPath}` : `cannot read ${this.currentPath}: ${code ?? (err as Error).message}` };
    }
    try {
      const pair = splitPem(text);
      const stored = describe(pair, await fs.realpath(this.currentPath));
      if (stored.notAfter.getTime() <= now) return { unusable: `the stored certificate ${stored.path} expired at ${stored.notAfter.toISOString()}` };
      return stored;
    } catch (err) {
      return { unusable: `the stored certificate ${this.currentPath} is not usable: ${(err as Error).message}` };
    }
  }

  /** Stores a new pair and makes it the current one; returns it as stored. */
  async save(certPem: string, keyPem: string, now = new Date()): Promise<StoredPair> {
    await fs.mkdir(this.dir, { recursive: true, mode: DIR_MODE });
    const name = `${this.prefix}-${timestamp(now)}.pem`;
    const path = join(this.dir, name);
    const text = `${certPem.trimEnd()}\n${keyPem.trimEnd()}\n`;
    const stored = describe(splitPem(text), path);
    const handle = await fs.open(path, 'w', FILE_MODE);
    try {
      await handle.writeFile(text);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.chmod(path, FILE_MODE);
    const updated = join(this.dir, `${this.prefix}-updated.pem`);
    await fs.rm(updated, { force: true });
    await fs.symlink(name, updated);
    await fs.rename(updated, this.currentPath);
    await this.prune(name);
    return stored;
  }

  /** Removes timestamped files older than the previous one. */
  private async prune(current: string): Promise<void> {
    const pattern = new RegExp(`^${this.prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-\\d{4}(-\\d{2}){5}(-\\d+)?\\.pem$`);
    const names = (await fs.readdir(this.dir)).filter((name) => pattern.test(name) && name !== current).sort();
    for (const name of names.slice(0, Math.max(0, names.length - KEEP_PREVIOUS))) await fs.rm(join(this.dir, name), { force: true });
  }
}

/** The certificates and the key of a store file, checked to belong together. */
function splitPem(text: string): { certPem: string; keyPem: string } {
  const certs = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g) ?? [];
  const key = text.match(/-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY-----\n?/)?.[0];
  if (certs.length === 0) throw new Error('it holds no certificate');
  if (!key) throw new Error('it holds no private key');
  const certPem = certs.join('');
  const leaf = new X509Certificate(certs[0]!);
  if (!leaf.checkPrivateKey(createPrivateKey(key))) throw new Error('its key does not belong to its certificate');
  return { certPem, keyPem: key };
}

function describe(pair: { certPem: string; keyPem: string }, path: string): StoredPair {
  const leaf = new X509Certificate(pair.certPem);
  return { ...pair, notBefore: new Date(leaf.validFrom), notAfter: new Date(leaf.validTo), path };
}

/** client-go's layout, YYYY-MM-DD-HH-MM-SS, plus milliseconds when several land in one second. */
function timestamp(now: Date): string {
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${now.getUTCFullYear()}-${p(now.getUTCMonth() + 1)}-${p(now.getUTCDate())}-${p(now.getUTCHours())}-${p(now.getUTCMinutes())}-${p(now.getUTCSeconds())}-${p(now.getUTCMilliseconds(), 3)}`;
}
