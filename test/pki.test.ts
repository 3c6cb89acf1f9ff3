import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import forge from 'node-forge';
import { firstValueFrom, timeout } from 'rxjs';
import { setLogLevel } from '../lib/observe/log.js';
import { certificateExpiry, certificateSans, createCa, issueCertificate, type CertificateAndKey } from '../lib/pki/certificates.js';
import { ensureLocalPki, localAgentCertificate, localAgentPaths, type LocalPkiPaths } from '../lib/pki/local-pki.js';
import { FileTlsSource, localPkiTlsSource } from '../lib/pki/tls-source.js';

const BIN = fileURLToPath(new URL('../bin/tunnel-pki.js', import.meta.url));
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const DAY_MS = 86_400_000;
const OPENSSL = '/usr/bin/openssl';
/** AlgorithmIdentifier { ecdsa-with-SHA256 } with the parameters absent (RFC 5758), not NULL. */
const ECDSA_WITH_SHA256_DER = Buffer.from('300a06082a8648ce3d040302', 'hex');
const PKI_FILES = ['ca.crt', 'ca.key', 'server.crt', 'server.key', 'client.crt', 'client.key', 'agents/c1.crt', 'agents/c1.key'];

setLogLevel('error');

let root: string;
let sharedStateDir: string;
let shared: LocalPkiPaths;
/** The local PKI's certificate for the agent of cluster c1. */
let agent: { cert: string; key: string };

/** One PKI shared by the read-only tests, so most tests need not create their own. */
test.before(async () => {
  root = mkdtempSync(join(tmpdir(), 'tunnel-pki-test-'));
  sharedStateDir = join(root, 'shared');
  shared = await ensureLocalPki({ stateDir: sharedStateDir });
  agent = await localAgentCertificate(sharedStateDir, 'c1');
});

test.after.always(() => {
  rmSync(root, { recursive: true, force: true });
});

function freshDir(name: string): string {
  return mkdtempSync(join(root, `${name}-`));
}

function read(path: string): string {
  return readFileSync(path, 'utf8');
}

function snapshot(dir: string): Record<string, string> {
  return Object.fromEntries(PKI_FILES.map((name) => [name, read(join(dir, name))]));
}

function assertIssuedBy(t: ExecutionContext, caPem: string, certPem: string): void {
  const ca = new X509Certificate(caPem);
  const cert = new X509Certificate(certPem);
  t.true(cert.checkIssued(ca), 'issuer name matches the CA subject');
  t.true(cert.verify(ca.publicKey), 'signature verifies with the CA key');
}

/** Checks that certPem holds an ECDSA P-256 key, signed ecdsa-with-SHA256, and keyPem is its key. */
function assertP256(t: ExecutionContext, pair: CertificateAndKey): void {
  const cert = new X509Certificate(pair.certPem);
  t.is(cert.publicKey.asymmetricKeyType, 'ec');
  t.is(cert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.true(cert.checkPrivateKey(createPrivateKey(pair.keyPem)), 'key matches the certificate');
  t.true(pair.keyPem.startsWith('-----BEGIN PRIVATE KEY-----'), 'key is PKCS#8 PEM');
}

/** How often needle occurs in haystack. */
function countOf(haystack: Buffer, needle: Buffer): number {
  let count = 0;
  for (let at = haystack.indexOf(needle); at >= 0; at = haystack.indexOf(needle, at + 1)) count++;
  return count;
}

function openssl(args: string[]): { code: number | null; output: string } {
  const run = spawnSync(OPENSSL, args, { encoding: 'utf8' });
  return { code: run.status, output: `${run.stdout}${run.stderr}` };
}

/** The hex key identifier openssl prints for the given extension of a certificate file. */
function keyIdentifier(certPath: string, extension: 'subjectKeyIdentifier' | 'authorityKeyIdentifier'): string {
  const { output } = openssl(['x509', '-in', certPath, '-noout', '-ext', extension]);
  return /([0-9A-F]{2}(?::[0-9A-F]{2}){19})/.exec(output)?.[1] ?? `no ${extension} in ${output}`;
}

/** RFC 5280 4.2.1.2 method 1 for an EC key: SHA-1 of the uncompressed point 04 || x || y. */
function expectedKeyIdentifier(certPem: string): string {
  const jwk = new X509Certificate(certPem).publicKey.export({ format: 'jwk' });
  const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]);
  return createHash('sha1').update(point).digest('hex').toUpperCase().match(/../g)!.join(':');
}

/** An RSA-2048 CA exactly as earlier versions created it (node-forge, sha256WithRSAEncryption). */
function createRsaCa(commonName: string): CertificateAndKey {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  const key = forge.pki.privateKeyFromPem(keyPem);
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
  cert.serialNumber = '4a01';
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 30 * DAY_MS);
  cert.setSubject([{ name: 'commonName', value: commonName }]);
  cert.setIssuer([{ name: 'commonName', value: commonName }]);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(key, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem };
}

/** Replaces path atomically, the way a certificate rotation tool should. */
function replaceFile(path: string, data: string): void {
  writeFileSync(`${path}.tmp`, data);
  renameSync(`${path}.tmp`, path);
}

function runBin(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, TUNNEL_LOG_LEVEL: 'warn' } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk; });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Connects with the given options and returns what the server sent, or the error. */
function tlsExchange(port: number, options: tls.ConnectionOptions): Promise<{ data: string; error?: Error }> {
  return new Promise((resolve) => {
    let data = '';
    const socket = tls.connect({ host: '127.0.0.1', port, ...options });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => { data += chunk; });
    socket.on('error', (error: Error) => resolve({ data, error }));
    socket.on('close', () => resolve({ data }));
  });
}

test('the local CA verifies every local certificate, with the right SANs and key usages', (t) => {
  const ca = new X509Certificate(read(shared.caCert));
  t.true(ca.ca);
  t.true(ca.checkIssued(ca));
  for (const cert of [shared.serverCert, agent.cert, shared.clientCert]) assertIssuedBy(t, read(shared.caCert), read(cert));

  const server = new X509Certificate(read(shared.serverCert));
  t.false(server.ca);
  t.is(server.subject, 'O=tunnel:server\nCN=tunnel-server');
  t.deepEqual([...server.keyUsage].sort(), [SERVER_AUTH, CLIENT_AUTH]);
  t.deepEqual(certificateSans(read(shared.serverCert)), { dnsNames: ['localhost'], ips: ['127.0.0.1', '::1'] });

  for (const [path, subject] of [[agent.cert, 'O=tunnel:agents\nCN=tunnel:agent:c1'], [shared.clientCert, 'O=tunnel:clients\nCN=tunnel-client']] as const) {
    const cert = new X509Certificate(read(path));
    t.is(cert.subject, subject);
    t.deepEqual(cert.keyUsage, [CLIENT_AUTH]);
    t.deepEqual(certificateSans(read(path)), { dnsNames: [], ips: [] });
  }
});

test('the local PKI is ECDSA P-256, and openssl verifies each leaf for its purpose', (t) => {
  const pairs = {
    ca: { certPem: read(shared.caCert), keyPem: read(shared.caKey) },
    server: { certPem: read(shared.serverCert), keyPem: read(shared.serverKey) },
    agent: { certPem: read(agent.cert), keyPem: read(agent.key) },
    client: { certPem: read(shared.clientCert), keyPem: read(shared.clientKey) },
  };
  for (const pair of Object.values(pairs)) {
    assertP256(t, pair);
    const der = new X509Certificate(pair.certPem).raw;
    t.is(countOf(der, ECDSA_WITH_SHA256_DER), 2, 'ecdsa-with-SHA256 without parameters in tbs.signature and signatureAlgorithm');
  }
  const ca = new X509Certificate(pairs.ca.certPem);
  for (const leaf of [pairs.server, pairs.agent, pairs.client]) {
    const cert = new X509Certificate(leaf.certPem);
    t.true(cert.checkIssued(ca));
    t.true(cert.verify(ca.publicKey));
  }

  const caSki = keyIdentifier(shared.caCert, 'subjectKeyIdentifier');
  t.is(caSki, expectedKeyIdentifier(pairs.ca.certPem));
  for (const path of [shared.serverCert, shared.clientCert]) {
    t.is(keyIdentifier(path, 'subjectKeyIdentifier'), expectedKeyIdentifier(read(path)));
    t.is(keyIdentifier(path, 'authorityKeyIdentifier'), caSki, 'authorityKeyIdentifier is the CA subjectKeyIdentifier');
  }
  const { output: text } = openssl(['x509', '-in', shared.serverCert, '-noout', '-text']);
  t.regex(text, /Key Usage: critical\n\s+Digital Signature\n/);

  const verify = (purpose: string, path: string) => openssl(['verify', '-CAfile', shared.caCert, '-purpose', purpose, path]);
  for (const [purpose, path] of [['sslserver', shared.serverCert], ['sslclient', shared.serverCert], ['sslclient', agent.cert], ['sslclient', shared.clientCert]]) {
    const run = verify(purpose, path);
    t.is(run.code, 0, `${purpose} ${path}: ${run.output}`);
    t.true(run.output.includes(`${path}: OK`), run.output);
  }
  t.not(verify('sslserver', shared.clientCert).code, 0, 'a client certificate is no server certificate');
});

test('mutual TLS on 127.0.0.1 with a fresh ECDSA P-256 CA, server and client certificate', async (t) => {
  const ca = createCa('mtls test CA');
  const serverPair = issueCertificate(ca, { commonName: 'mtls-server', usage: 'server', ips: ['127.0.0.1'] });
  const clientPair = issueCertificate(ca, { commonName: 'mtls-client', usage: 'client' });
  for (const pair of [ca, serverPair, clientPair]) assertP256(t, pair);

  const dir = freshDir('mtls');
  for (const [name, pem] of [['ca.pem', ca.certPem], ['server.pem', serverPair.certPem], ['client.pem', clientPair.certPem]]) {
    writeFileSync(join(dir, name), pem);
  }
  for (const [purpose, name] of [['sslserver', 'server.pem'], ['sslclient', 'client.pem']]) {
    const run = openssl(['verify', '-CAfile', join(dir, 'ca.pem'), '-purpose', purpose, join(dir, name)]);
    t.is(run.code, 0, run.output);
  }

  let serverSide: { authorized: boolean; peer: string | undefined; curve: string | undefined } | undefined;
  const server = tls.createServer({
    key: serverPair.keyPem, cert: serverPair.certPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true,
  }, (socket) => {
    const peer = socket.getPeerX509Certificate();
    serverSide = { authorized: socket.authorized, peer: peer?.subject, curve: peer?.publicKey.asymmetricKeyDetails?.namedCurve };
    socket.setEncoding('utf8');
    socket.on('data', (message: string) => socket.end(`echo ${message}`));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  try {
    const socket = tls.connect({ host: '127.0.0.1', port, key: clientPair.keyPem, cert: clientPair.certPem, ca: ca.certPem });
    await once(socket, 'secureConnect');
    t.true(socket.authorized, String(socket.authorizationError));
    t.is(socket.getPeerX509Certificate()?.subject, 'CN=mtls-server');
    socket.setEncoding('utf8');
    let reply = '';
    socket.on('data', (chunk: string) => { reply += chunk; });
    socket.write('ping');
    await once(socket, 'end');
    socket.destroy();
    t.is(reply, 'echo ping');
    t.deepEqual(serverSide, { authorized: true, peer: 'CN=mtls-client', curve: 'prime256v1' });
  } finally {
    server.close();
  }
});

test('an RSA CA from an earlier version still issues ECDSA leaves that verify', async (t) => {
  const rsaCa = createRsaCa('legacy RSA CA');
  const stateDir = freshDir('rsa-ca');
  mkdirSync(join(stateDir, 'pki'), { recursive: true, mode: 0o700 });
  writeFileSync(join(stateDir, 'pki', 'ca.crt'), rsaCa.certPem);
  writeFileSync(join(stateDir, 'pki', 'ca.key'), rsaCa.keyPem, { mode: 0o600 });

  const paths = await ensureLocalPki({ stateDir });
  await localAgentCertificate(stateDir, 'c1');
  t.is(read(paths.caCert), rsaCa.certPem, 'the RSA CA is kept');
  const ca = new X509Certificate(rsaCa.certPem);
  t.is(ca.publicKey.asymmetricKeyType, 'rsa');
  for (const [certPath, keyPath, purpose] of [
    [paths.serverCert, paths.serverKey, 'sslserver'],
    [localAgentPaths(stateDir, 'c1').cert, localAgentPaths(stateDir, 'c1').key, 'sslclient'],
    [paths.clientCert, paths.clientKey, 'sslclient'],
  ] as const) {
    assertP256(t, { certPem: read(certPath), keyPem: read(keyPath) });
    assertIssuedBy(t, rsaCa.certPem, read(certPath));
    const run = openssl(['verify', '-CAfile', paths.caCert, '-purpose', purpose, certPath]);
    t.is(run.code, 0, run.output);
    t.regex(openssl(['x509', '-in', certPath, '-noout', '-text']).output, /Signature Algorithm: sha256WithRSAEncryption/);
    t.is(keyIdentifier(certPath, 'authorityKeyIdentifier'), keyIdentifier(paths.caCert, 'subjectKeyIdentifier'));
  }

  const leaf = issueCertificate(rsaCa, { commonName: 'direct', usage: 'client' });
  assertIssuedBy(t, rsaCa.certPem, leaf.certPem);
});

test('a leaf with an RSA key from an earlier version is reissued as ECDSA P-256', async (t) => {
  const stateDir = freshDir('rsa-leaf');
  const paths = await ensureLocalPki({ stateDir });
  const dir = freshDir('rsa-leaf-csr');
  const csr = join(dir, 'client.csr');
  let run = openssl(['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', paths.clientKey, '-out', csr, '-subj', '/O=tunnel:clients/CN=tunnel-client']);
  t.is(run.code, 0, run.output);
  run = openssl(['x509', '-req', '-in', csr, '-CA', paths.caCert, '-CAkey', join(stateDir, 'pki', 'ca.key'), '-out', paths.clientCert, '-days', '100', '-set_serial', '77']);
  t.is(run.code, 0, run.output);
  t.is(new X509Certificate(read(paths.clientCert)).publicKey.asymmetricKeyType, 'rsa');

  await ensureLocalPki({ stateDir });
  assertP256(t, { certPem: read(paths.clientCert), keyPem: read(paths.clientKey) });
});

test('issueCertificate refuses a CA key that does not belong to the CA certificate', (t) => {
  const other = createCa('other CA');
  t.throws(() => issueCertificate({ certPem: read(shared.caCert), keyPem: other.keyPem }, { commonName: 'x', usage: 'client' }), {
    message: /CA private key does not belong to the CA certificate/,
  });
});

test('issueCertificate sets organization, IPv4/IPv6 SANs, a positive serial and backdated validity', (t) => {
  const ca = { certPem: read(shared.caCert), keyPem: read(shared.caKey) };
  const leaf = issueCertificate(ca, {
    commonName: 'konnectivity-client', organization: ['system:masters'], usage: 'server',
    dnsNames: ['tunnel.example.com'], ips: ['10.0.0.1', 'FD00:0:0::1'], days: 30,
  });
  assertIssuedBy(t, ca.certPem, leaf.certPem);
  const cert = new X509Certificate(leaf.certPem);
  t.is(cert.subject, 'O=system:masters\nCN=konnectivity-client');
  t.deepEqual(cert.keyUsage, [SERVER_AUTH]);
  t.deepEqual(certificateSans(leaf.certPem), { dnsNames: ['tunnel.example.com'], ips: ['10.0.0.1', 'fd00::1'] });
  t.regex(cert.serialNumber, /^[4-7][0-9A-F]{31}$/);
  const backdate = Date.now() - new Date(cert.validFrom).getTime();
  t.true(backdate > 4 * 60_000 && backdate < 6 * 60_000, `notBefore is ${backdate} ms in the past`);
  const days = (certificateExpiry(leaf.certPem).getTime() - Date.now()) / DAY_MS;
  t.true(days > 29.9 && days < 30.1, `valid for ${days} days`);
  t.throws(() => issueCertificate(ca, { commonName: 'x', usage: 'client', ips: ['10.0.0'] }), { message: /"10\.0\.0" is not an IP address/ });
});

test('ensureLocalPki reuses the same files and keeps keys private', async (t) => {
  const before = snapshot(shared.dir);
  const again = await ensureLocalPki({ stateDir: sharedStateDir });
  t.deepEqual(again, shared);
  t.deepEqual(snapshot(shared.dir), before);
  t.is(statSync(shared.dir).mode & 0o777, 0o700);
  for (const key of [shared.caKey, shared.serverKey, agent.key, shared.clientKey]) {
    t.is(statSync(key).mode & 0o777, 0o600, key);
  }
});

test('a new SAN reissues only the server certificate and keeps its old SANs', async (t) => {
  const stateDir = freshDir('san');
  cpSync(sharedStateDir, stateDir, { recursive: true });
  const before = snapshot(join(stateDir, 'pki'));

  const paths = await ensureLocalPki({ stateDir, dnsNames: ['tunnel.example.com'], ips: ['10.1.2.3'] });
  const after = snapshot(paths.dir);
  t.not(after['server.crt'], before['server.crt']);
  t.not(after['server.key'], before['server.key']);
  for (const name of PKI_FILES.filter((file) => !file.startsWith('server.'))) t.is(after[name], before[name], name);
  assertIssuedBy(t, after['ca.crt'], after['server.crt']);
  t.deepEqual(certificateSans(after['server.crt']), {
    dnsNames: ['localhost', 'tunnel.example.com'],
    ips: ['127.0.0.1', '::1', '10.1.2.3'],
  });

  await ensureLocalPki({ stateDir, dnsNames: [] });
  t.deepEqual(snapshot(paths.dir), after, 'asking for fewer SANs keeps the certificate');
});

test('two tunnel-pki init processes racing on one fresh state dir agree on one CA', async (t) => {
  const stateDir = freshDir('race');
  const runs = await Promise.all([runBin(['init', '--state-dir', stateDir]), runBin(['init', '--state-dir', stateDir])]);
  for (const run of runs) t.is(run.code, 0, run.stderr);

  const caPem = read(join(stateDir, 'pki', 'ca.crt'));
  const fingerprint = new X509Certificate(caPem).fingerprint256;
  for (const run of runs) t.true(run.stdout.includes(`caFingerprintSha256: ${fingerprint}`), run.stdout);
  for (const leaf of ['server', 'client']) {
    const certPem = read(join(stateDir, 'pki', `${leaf}.crt`));
    assertIssuedBy(t, caPem, certPem);
    const key = readFileSync(join(stateDir, 'pki', `${leaf}.key`));
    t.true(new X509Certificate(certPem).checkPrivateKey(createPrivateKey(key)), `${leaf}.key matches`);
  }
});

test('mTLS with the local certificates: a client certificate is required', async (t) => {
  const ca = readFileSync(shared.caCert);
  const server = tls.createServer({
    key: readFileSync(shared.serverKey), cert: readFileSync(shared.serverCert), ca,
    requestCert: true, rejectUnauthorized: true,
  }, (socket) => socket.end(`hello ${socket.getPeerX509Certificate()?.subject}`));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  try {
    const ok = await tlsExchange(port, { key: readFileSync(shared.clientKey), cert: readFileSync(shared.clientCert), ca });
    t.is(ok.error, undefined);
    t.is(ok.data, 'hello O=tunnel:clients\nCN=tunnel-client');

    const refused = once(server, 'tlsClientError');
    const anonymous = await tlsExchange(port, { ca });
    t.is(anonymous.data, '');
    const [serverError] = await refused as [Error];
    t.regex(serverError.message, /certificate/i);
  } finally {
    server.close();
  }
});

test('FileTlsSource explains a missing file and a key that does not match', async (t) => {
  const missing = join(root, 'nowhere', 'server.crt');
  await t.throwsAsync(FileTlsSource.load({ key: shared.serverKey, cert: missing, ca: shared.caCert, role: 'tunnel-server agent listener' }), {
    message: `cannot read certificate ${missing} for tunnel-server agent listener: ENOENT (no such file). Give an existing PEM file, or omit the certificate flags to use the local PKI in the state directory.`,
  });
  await t.throwsAsync(FileTlsSource.load({ key: agent.key, cert: shared.serverCert, ca: shared.caCert, role: 'tunnel-server agent listener' }), {
    message: new RegExp(`^private key ${agent.key} does not match certificate ${shared.serverCert} for tunnel-server agent listener\\.`),
  });
  await t.throwsAsync(FileTlsSource.load({ key: shared.serverKey, cert: shared.serverKey, ca: shared.caCert, role: 'r' }), {
    message: new RegExp(`^${shared.serverKey} is not a PEM certificate for r`),
  });
});

test('FileTlsSource serves the local PKI files', async (t) => {
  const source = await localPkiTlsSource(shared, 'client');
  t.deepEqual(source.current(), {
    key: readFileSync(shared.clientKey), cert: readFileSync(shared.clientCert), ca: readFileSync(shared.caCert),
  });
  source.close();
});

test('FileTlsSource ignores broken files and emits when a valid new certificate arrives', async (t) => {
  const dir = freshDir('watch');
  const paths = { key: join(dir, 'tls.key'), cert: join(dir, 'tls.crt'), ca: join(dir, 'ca.crt'), role: 'test' };
  cpSync(shared.serverKey, paths.key);
  cpSync(shared.serverCert, paths.cert);
  cpSync(shared.caCert, paths.ca);
  const source = await FileTlsSource.load(paths, { watchIntervalMs: 10 });
  try {
    const original = source.current();
    const changed = firstValueFrom(source.changes.pipe(timeout(5000)));

    replaceFile(paths.cert, 'not a certificate');
    await sleep(100);
    t.is(source.current(), original, 'a broken file keeps the old material');

    replaceFile(paths.key, read(shared.clientKey));
    replaceFile(paths.cert, read(shared.clientCert));
    const next = await changed;
    t.deepEqual(next.cert, readFileSync(shared.clientCert));
    t.deepEqual(next.key, readFileSync(shared.clientKey));
    t.is(source.current(), next);
  } finally {
    source.close();
  }
});

test('tunnel-pki issue writes a certificate the local CA verifies', async (t) => {
  const outDir = freshDir('issued');
  const run = await runBin(['issue', '--state-dir', sharedStateDir, '--kind', 'agent', '--name', 'cluster-a', '--ips', '10.9.8.7', '--out-dir', outDir]);
  t.is(run.code, 0, run.stderr);
  const certPath = join(outDir, 'cluster-a.crt');
  t.true(run.stdout.includes(`cert: ${certPath}`), run.stdout);
  t.true(run.stdout.includes(`key: ${join(outDir, 'cluster-a.key')}`), run.stdout);
  assertIssuedBy(t, read(shared.caCert), read(certPath));
  const cert = new X509Certificate(read(certPath));
  t.is(cert.subject, 'O=tunnel:agents\nCN=tunnel:agent:cluster-a', 'an agent certificate names its cluster');
  t.deepEqual(cert.keyUsage, [CLIENT_AUTH]);
  t.deepEqual(certificateSans(read(certPath)).ips, ['10.9.8.7']);
  t.is(statSync(join(outDir, 'cluster-a.key')).mode & 0o777, 0o600);
});

test('tunnel-pki show prints subject, SANs and expiry of each certificate', async (t) => {
  const run = await runBin(['show', '--state-dir', sharedStateDir]);
  t.is(run.code, 0, run.stderr);
  t.true(run.stdout.includes(`${shared.serverCert}\n  subject:  O=tunnel:server, CN=tunnel-server\n`), run.stdout);
  t.true(run.stdout.includes(`${agent.cert}\n  subject:  O=tunnel:agents, CN=tunnel:agent:c1\n`), run.stdout);
  t.regex(run.stdout, /ips: +127\.0\.0\.1, ::1/);
  t.is(run.stdout.match(/expires: +\d{4}-/g)?.length, 4, 'CA, server, client and the agent of c1');
});

test('tunnel-pki rejects unknown flags and sub-commands with status 2', async (t) => {
  const bogus = await runBin(['--bogus']);
  t.is(bogus.code, 2);
  t.regex(bogus.stderr, /--bogus/);
  const subBogus = await runBin(['init', '--bogus']);
  t.is(subBogus.code, 2);
  t.regex(subBogus.stderr, /--bogus/);
  const unknown = await runBin(['frobnicate']);
  t.is(unknown.code, 2);
  t.regex(unknown.stderr, /unknown sub-command 'frobnicate'/);
  const badKind = await runBin(['issue', '--kind', 'root', '--name', 'x']);
  t.is(badKind.code, 2);
  t.regex(badKind.stderr, /--kind=root/);
});

test('tunnel-pki --help lists the sub-commands and --version prints the version', async (t) => {
  const help = await runBin(['--help']);
  t.is(help.code, 0);
  for (const sub of ['init', 'issue', 'show']) t.regex(help.stdout, new RegExp(`^  ${sub} `, 'm'));
  const issueHelp = await runBin(['issue', '--help']);
  t.is(issueHelp.code, 0);
  t.regex(issueHelp.stdout, /--kind=client\|agent\|server/);
  const version = await runBin(['--version']);
  t.is(version.code, 0);
  t.regex(version.stdout, /^tunnel-pki \d+\.\d+\.\d+/);
});
