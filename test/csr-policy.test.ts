/**
 * The approver's rules, one by one: for each, a request that passes and one that is denied
 * for that rule, with the rule named.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import type { V1CertificateSigningRequest } from '@kubernetes/client-node';
import { createCsr, type CsrSubject } from '../lib/pki/csr.js';
import { AGENT_USAGES, SERVER_USAGES, denialReason, reviewCsr, type CsrPolicy } from '../lib/server/csr-policy.js';

const SIGNERS = { server: 'tunnel.tkestack.io/server', agent: 'tunnel.tkestack.io/agent' };
const SERVER_SA = 'system:serviceaccount:tunnel-system:tunnel-server';
const policy: CsrPolicy = {
  signers: SIGNERS,
  serverRequesters: [SERVER_SA],
  serverSans: () => ({ dnsNames: ['localhost', 'tunnel.example.com'], ips: ['127.0.0.1', '10.0.0.7'] }),
  agentRequester: (cluster) => `system:serviceaccount:tunnel-system:tunnel-agent-${cluster}`,
  maxExpirationSeconds: 86_400,
};

function csrObject(subject: CsrSubject | string, spec: Partial<NonNullable<V1CertificateSigningRequest['spec']>>): V1CertificateSigningRequest {
  const pem = typeof subject === 'string' ? subject : createCsr(subject).csrPem;
  return { metadata: { name: 'x' }, spec: { request: Buffer.from(pem).toString('base64'), signerName: SIGNERS.agent, usages: AGENT_USAGES, ...spec } };
}

const agentC1 = { commonName: 'tunnel:agent:c1', organization: ['tunnel:agents'] };
const agentSpec = { signerName: SIGNERS.agent, usages: AGENT_USAGES, username: 'system:serviceaccount:tunnel-system:tunnel-agent-c1', expirationSeconds: 3600 };
const server = { commonName: 'tunnel-server', organization: ['tunnel:server'], dnsNames: ['tunnel.example.com'], ips: ['10.0.0.7'] };
const serverSpec = { signerName: SIGNERS.server, usages: SERVER_USAGES, username: SERVER_SA };

function opensslCsr(args: string[]): string {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-policy-'));
  try {
    execFileSync('openssl', ['req', '-new', '-nodes', '-keyout', join(dir, 'k'), '-out', join(dir, 'r'), ...args], { stdio: 'ignore' });
    return readFileSync(join(dir, 'r'), 'utf8');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('requests that meet every rule are approved, for each role', (t) => {
  t.like(reviewCsr(csrObject(agentC1, agentSpec), policy), { decision: 'approve', role: 'agent' });
  t.like(reviewCsr(csrObject(server, serverSpec), policy), { decision: 'approve', role: 'server' });
  t.like(reviewCsr(csrObject(agentC1, { ...agentSpec, username: 'tunnel:agent:c1' }), policy), { decision: 'approve' }, 'an agent renewing with its own identity');
});

test('requests for other signers are left alone', (t) => {
  t.deepEqual(reviewCsr(csrObject(agentC1, { ...agentSpec, signerName: 'kubernetes.io/kube-apiserver-client' }), policy), { decision: 'ignore' });
  t.deepEqual(reviewCsr(csrObject(agentC1, { ...agentSpec, signerName: 'example.com/other' }), policy), { decision: 'ignore' });
});

const denials: Array<[string, V1CertificateSigningRequest, RegExp]> = [
  ['request', csrObject('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n', agentSpec), /malformed|DER/],
  ['organization', csrObject({ ...agentC1, organization: ['tunnel:agents', 'system:masters'] }, agentSpec), /exactly O=tunnel:agents, not O=tunnel:agents, O=system:masters/],
  ['organization', csrObject({ ...agentC1, organization: ['system:nodes'] }, agentSpec), /not O=system:nodes/],
  ['common-name', csrObject({ commonName: 'system:node:c1', organization: ['tunnel:agents'] }, agentSpec), /CN must be tunnel:agent:<cluster>/],
  ['common-name', csrObject({ ...server, commonName: 'kube-apiserver' }, serverSpec), /the server's CN must be tunnel-server/],
  ['subject', csrObject(opensslCsr(['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-subj', '/O=tunnel:agents/OU=x/CN=tunnel:agent:c1']), agentSpec), /only CN and O/],
  ['usages', csrObject(agentC1, { ...agentSpec, usages: ['digital signature', 'client auth', 'server auth'] }), /exactly client auth, digital signature/],
  ['usages', csrObject(server, { ...serverSpec, usages: ['digital signature', 'key encipherment', 'server auth'] }), /exactly digital signature, server auth/],
  ['extensions', csrObject(opensslCsr(['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-subj', '/O=tunnel:agents/CN=tunnel:agent:c1', '-addext', 'basicConstraints=critical,CA:TRUE']), agentSpec), /only a subjectAltName extension/],
  ['subject-alt-names', csrObject({ ...agentC1, dnsNames: ['c1.example'] }, agentSpec), /an agent certificate may hold no SANs/],
  ['subject-alt-names', csrObject({ ...server, dnsNames: ['kubernetes.default.svc'] }, serverSpec), /DNS:kubernetes\.default\.svc is not among the server's names/],
  ['subject-alt-names', csrObject({ ...server, ips: ['10.9.9.9'] }, serverSpec), /IP:10\.9\.9\.9 is not among/],
  ['key', csrObject(opensslCsr(['-newkey', 'rsa:1024', '-subj', '/O=tunnel:agents/CN=tunnel:agent:c1']), agentSpec), /RSA of at least 2048 bits, not rsa 1024/],
  ['expiration', csrObject(agentC1, { ...agentSpec, expirationSeconds: 86_401 }), /expirationSeconds 86401 is over the limit of 86400/],
  ['requester', csrObject(agentC1, { ...agentSpec, username: 'system:serviceaccount:tunnel-system:tunnel-agent-c2' }), /tunnel-agent-c2 may not request the certificate of cluster "c1"'s agent/],
  ['requester', csrObject(server, { ...serverSpec, username: 'system:serviceaccount:default:someone' }), /may not request the server's certificate/],
];

for (const [rule, object, message] of denials) {
  test(`rule ${rule}: ${message.source.slice(0, 60)}`, (t) => {
    const review = reviewCsr(object, policy);
    t.like(review, { decision: 'deny', rule });
    if (review.decision === 'deny') t.regex(review.message, message);
    t.is(denialReason(rule), `Denied${rule.split('-').map((w) => w[0].toUpperCase() + w.slice(1)).join('')}`);
  });
}

test('an openssl RSA-2048 or P-384 request that meets the rules passes the key rule', (t) => {
  for (const key of [['-newkey', 'rsa:2048'], ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp384r1']]) {
    t.like(reviewCsr(csrObject(opensslCsr([...key, '-subj', '/O=tunnel:agents/CN=tunnel:agent:c1']), agentSpec), policy), { decision: 'approve' });
  }
});

test('the signer re-checks an approved request on every rule but the requester', (t) => {
  const object = csrObject(agentC1, { ...agentSpec, username: 'an-administrator' });
  t.like(reviewCsr(object, policy), { decision: 'deny', rule: 'requester' });
  t.like(reviewCsr(object, policy, { checkRequester: false }), { decision: 'approve' });
});
