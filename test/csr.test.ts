/**
 * Certificate requests: ours verify with openssl, openssl's (RSA and ECDSA) read back here,
 * and a request that was tampered with, or is not one, is refused with a reason.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { createCsr, parseCsr } from '../lib/pki/csr.js';
import { createCa, signCertificate } from '../lib/pki/certificates.js';

const run = promisify(execFile);
const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-csr-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

test('a request we create verifies with openssl and says what we asked for', async (t) => {
  const { csrPem } = createCsr({ commonName: 'tunnel-server', organization: ['tunnel:server'], dnsNames: ['tunnel.example.com'], ips: ['10.0.0.7', 'fd00::1'] });
  const file = join(dir, 'ours.csr');
  writeFileSync(file, csrPem);
  const { stdout, stderr } = await run('openssl', ['req', '-in', file, '-noout', '-verify', '-text']);
  t.regex(stdout + stderr, /verify OK/i);
  t.regex(stdout, /Subject: O\s*=\s*tunnel:server, CN\s*=\s*tunnel-server/);
  t.regex(stdout, /DNS:tunnel\.example\.com, IP Address:10\.0\.0\.7, IP Address:FD00:0:0:0:0:0:0:1/);
  t.regex(stdout, /ASN1 OID: prime256v1/);
  const parsed = parseCsr(csrPem);
  t.like(parsed, { commonName: 'tunnel-server', organization: ['tunnel:server'], dnsNames: ['tunnel.example.com'], ips: ['10.0.0.7', 'fd00::1'], otherExtensions: [], publicKey: { type: 'ec', curve: 'prime256v1' } });
});

test('an agent request has no SANs and carries only CN and O', (t) => {
  const parsed = parseCsr(createCsr({ commonName: 'tunnel:agent:c1', organization: ['tunnel:agents'] }).csrPem);
  t.deepEqual([parsed.commonName, parsed.organization, parsed.dnsNames, parsed.ips, parsed.otherSubjectAttributes], ['tunnel:agent:c1', ['tunnel:agents'], [], [], []]);
});

for (const [kind, keyArgs] of [['RSA-2048', ['-newkey', 'rsa:2048']], ['ECDSA P-384', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp384r1']]] as const) {
  test(`an openssl ${kind} request is read back with its names, key and extensions`, async (t) => {
    const file = join(dir, `${kind}.csr`);
    await run('openssl', ['req', '-new', ...keyArgs, '-nodes', '-keyout', join(dir, `${kind}.key`), '-out', file,
      '-subj', '/O=a/O=b/OU=unit/CN=someone', '-addext', 'subjectAltName=DNS:x.example,IP:192.0.2.1,email:me@example.com,URI:spiffe://x/y',
      '-addext', 'basicConstraints=CA:TRUE']);
    const parsed = parseCsr(readFileSync(file));
    t.is(parsed.commonName, 'someone');
    t.deepEqual(parsed.organization, ['a', 'b']);
    t.deepEqual(parsed.otherSubjectAttributes, ['2.5.4.11'], 'OU is reported');
    t.deepEqual([parsed.dnsNames, parsed.ips, parsed.emails, parsed.uris], [['x.example'], ['192.0.2.1'], ['me@example.com'], ['spiffe://x/y']]);
    t.deepEqual(parsed.otherExtensions, ['2.5.29.19'], 'basicConstraints is reported');
    t.is(parsed.publicKey.type, kind.startsWith('RSA') ? 'rsa' : 'ec');
    if (kind.startsWith('RSA')) t.is(parsed.publicKey.bits, 2048);
    else t.is(parsed.publicKey.curve, 'secp384r1');
  });
}

test('a tampered request, another PEM, and garbage are refused with a reason', (t) => {
  const { csrPem } = createCsr({ commonName: 'tunnel:agent:c1', organization: ['tunnel:agents'] });
  const body = Buffer.from(csrPem.replace(/-----[^-]+-----/g, '').replace(/\s/g, ''), 'base64');
  const at = body.indexOf(Buffer.from('tunnel:agent:c1'));
  body[at + 'tunnel:agent:'.length] = 'd'.charCodeAt(0);
  const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${body.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  t.throws(() => parseCsr(tampered), { message: /signature does not verify/ });
  t.throws(() => parseCsr(createCa('x').certPem), { message: /no "CERTIFICATE REQUEST" block \(found "CERTIFICATE"\)/ });
  t.throws(() => parseCsr('hello'), { message: /not PEM|no "CERTIFICATE REQUEST" block/ });
  t.throws(() => parseCsr('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n'), { message: /malformed|not valid DER/ });
});

test('a signer issues the certificate for the request\'s key, with the lifetime asked for', (t) => {
  const ca = createCa('tunnel CA');
  const { csrPem, keyPem } = createCsr({ commonName: 'tunnel-server', dnsNames: ['tunnel.example.com'] });
  const parsed = parseCsr(csrPem);
  const certPem = signCertificate(ca, { commonName: parsed.commonName!, organization: ['tunnel:server'], dnsNames: parsed.dnsNames, usage: 'server', lifetimeSeconds: 600 }, parsed.publicKeyInfoDer);
  const cert = new X509Certificate(certPem);
  t.true(cert.checkPrivateKey(createPrivateKey(keyPem)), 'the certificate is for the requester\'s key');
  t.true(cert.verify(new X509Certificate(ca.certPem).publicKey), 'signed by the CA');
  const lifetime = (new Date(cert.validTo).getTime() - Date.now()) / 1000;
  t.true(lifetime > 590 && lifetime <= 601, `${lifetime} s left`);
  t.true(Date.now() - new Date(cert.validFrom).getTime() <= 61_000, 'backdated by at most a tenth of its lifetime');
  t.is(cert.subjectAltName, 'DNS:tunnel.example.com');
});
