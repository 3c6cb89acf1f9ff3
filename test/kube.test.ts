/**
 * lib/kube against the Kubernetes API double, and the certificate store: configurations
 * from every source, failures in an operator's words, watches that resume and list again on
 * 410, and stored certificates that are reused only while they are good.
 */
import test from 'ava';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { CoreV1Api, type V1ConfigMap } from '@kubernetes/client-node';
import { startKubeApi, type KubeApiDouble } from '../harness/kube-api/index.js';
import { loadKube, SERVICE_ACCOUNT_DIR } from '../lib/kube/kube-config.js';
import { kubeCall, KubeApiError } from '../lib/kube/api-errors.js';
import { listWatch } from '../lib/kube/list-watch.js';
import { CertificateStore } from '../lib/pki/certificate-store.js';
import { createCa, issueCertificate } from '../lib/pki/certificates.js';
import { UsageError } from '../lib/common/errors.js';
import { logger } from '../lib/observe/log.js';

const log = logger('test');
let api: KubeApiDouble;
const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-kube-'));

test.before(async () => {
  api = await startKubeApi();
  api.objects.put('', 'namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'team' } });
  api.addToken('reader', { username: 'reader' });
  api.grant({ user: 'reader' }, [{ verbs: ['get', 'list', 'watch'], apiGroups: [''], resources: ['configmaps'], namespaces: ['team'] }]);
});
test.after.always(async () => {
  await api?.close();
  rmSync(dir, { recursive: true, force: true });
});

function file(name: string, text: string): string {
  writeFileSync(join(dir, name), text, { mode: 0o600 });
  return join(dir, name);
}

test('a kubeconfig, a server with CA and token files, and a pod\'s service account all reach the API server', async (t) => {
  const fromFile = loadKube({ kubeconfig: file('reader.kubeconfig', api.kubeconfig({ token: 'reader' }, { namespace: 'team' })) });
  t.is(fromFile.namespace, 'team');
  const fromParts = loadKube({ server: api.url, caFile: file('ca.crt', api.caPem), tokenFile: file('token', 'reader\n') });
  const root = join(dir, 'pod');
  mkdirSync(join(root, SERVICE_ACCOUNT_DIR), { recursive: true });
  writeFileSync(join(root, SERVICE_ACCOUNT_DIR, 'token'), 'reader');
  writeFileSync(join(root, SERVICE_ACCOUNT_DIR, 'ca.crt'), api.caPem);
  writeFileSync(join(root, SERVICE_ACCOUNT_DIR, 'namespace'), 'team');
  const [host, port] = api.url.replace('https://', '').split(':');
  Object.assign(process.env, { KUBERNETES_SERVICE_HOST: host, KUBERNETES_SERVICE_PORT: port });
  let inCluster;
  try {
    inCluster = loadKube({ inCluster: true, root });
  } finally {
    delete process.env.KUBERNETES_SERVICE_HOST;
    delete process.env.KUBERNETES_SERVICE_PORT;
  }
  t.is(inCluster.namespace, 'team');
  for (const kube of [fromFile, fromParts, inCluster]) {
    const list = await kube.config.makeApiClient(CoreV1Api).listNamespacedConfigMap({ namespace: 'team' });
    t.true(Array.isArray(list.items), kube.describe);
  }
});

test('a kubeconfig that is missing, does not parse, or has no context is a usage error naming the file', (t) => {
  t.throws(() => loadKube({ kubeconfig: join(dir, 'nowhere') }), { instanceOf: UsageError, message: /cannot read the kubeconfig .*nowhere: ENOENT/ });
  t.throws(() => loadKube({ kubeconfig: file('bad', 'clusters: [x: y: z') }), { instanceOf: UsageError, message: /the kubeconfig .*bad does not parse/ });
  t.throws(() => loadKube({ kubeconfig: file('empty', 'apiVersion: v1\nkind: Config\n') }), { instanceOf: UsageError, message: /names no current context/ });
  t.throws(() => loadKube({ inCluster: true, root: join(dir, 'no-pod') }), { instanceOf: UsageError, message: /not running in a Kubernetes pod/ });
  t.throws(() => loadKube({ server: api.url, caFile: join(dir, 'no-ca'), tokenFile: join(dir, 'token') }), { instanceOf: UsageError, message: /the CA bundle file .*no-ca .* does not exist/ });
});

test('API failures name the object, the verb, and what to grant', async (t) => {
  const kube = loadKube({ kubeconfig: file('reader2.kubeconfig', api.kubeconfig({ token: 'reader' })) });
  const core = kube.config.makeApiClient(CoreV1Api);
  const forbidden = await t.throwsAsync(kubeCall({ verb: 'create', resource: 'configmaps', group: '', name: 'x', namespace: 'team' }, kube.server,
    () => core.createNamespacedConfigMap({ namespace: 'team', body: { metadata: { name: 'x' } } })), { instanceOf: KubeApiError });
  t.is(forbidden?.code, 403);
  t.regex(forbidden.message, /cannot create configmaps "x" in namespace "team" at https:\/\/127\.0\.0\.1:\d+: forbidden: configmaps is forbidden: User "reader" cannot create resource "configmaps" in API group "" in the namespace "team"; grant the caller "create" on resource "configmaps"/);
  t.false(forbidden.retryable);
  const missing = await t.throwsAsync(kubeCall({ verb: 'get', resource: 'configmaps', group: '', name: 'nope', namespace: 'team' }, kube.server,
    () => core.readNamespacedConfigMap({ name: 'nope', namespace: 'team' })), { instanceOf: KubeApiError });
  t.is(missing?.code, 404);
  t.regex(missing.message, /not found: configmaps "nope" not found/);
  const stranger = loadKube({ kubeconfig: file('stranger.kubeconfig', api.kubeconfig({ token: 'nobody-knows-this' })) });
  const unauthorized = await t.throwsAsync(kubeCall({ verb: 'list', resource: 'configmaps', group: '', namespace: 'team' }, stranger.server,
    () => stranger.config.makeApiClient(CoreV1Api).listNamespacedConfigMap({ namespace: 'team' })), { instanceOf: KubeApiError });
  t.regex(unauthorized.message, /does not accept the credentials \(401 Unauthorized\)/);
  const away = loadKube({ server: 'https://127.0.0.1:9', caFile: join(dir, 'ca.crt'), tokenFile: join(dir, 'token') });
  const unreachable = await t.throwsAsync(kubeCall({ verb: 'list', resource: 'configmaps', group: '', namespace: 'team' }, away.server,
    () => away.config.makeApiClient(CoreV1Api).listNamespacedConfigMap({ namespace: 'team' })), { instanceOf: KubeApiError });
  t.regex(unreachable.message, /the API server is not reachable \(ECONNREFUSED\); check the server address/);
  t.true(unreachable.retryable);
});

test('a watch resumes where it left off, and lists again when its resourceVersion has expired', async (t) => {
  const kube = loadKube({ kubeconfig: file('reader3.kubeconfig', api.kubeconfig({ token: 'reader' })) });
  const core = kube.config.makeApiClient(CoreV1Api);
  const put = (name: string, value: string) => api.objects.put('', 'configmaps', { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace: 'team' }, data: { value } });
  put('first', '1');
  const events = listWatch<V1ConfigMap>({
    config: kube.config, server: kube.server, path: '/api/v1/namespaces/team/configmaps',
    resource: { resource: 'configmaps', group: '', namespace: 'team' },
    list: () => core.listNamespacedConfigMap({ namespace: 'team' }), retry: { initialMs: 50 }, log,
  });
  const seen: string[] = [];
  const subscription = events.subscribe(({ type, object }) => seen.push(`${type} ${object.metadata?.name}=${object.data?.value}`));
  try {
    const until = async (line: string) => { for (let i = 0; i < 200 && !seen.includes(line); i++) await new Promise((r) => setTimeout(r, 25)); t.true(seen.includes(line), `${line} in ${seen.join('; ')}`); };
    await until('ADDED first=1');
    put('second', '2');
    await until('ADDED second=2');
    api.closeWatches();            // the server ends the watch: it resumes from its resourceVersion
    put('first', '3');
    await until('MODIFIED first=3');
    t.is(seen.filter((l) => l === 'ADDED first=1').length, 1, 'resumed, not listed again');
    // Changes while the watch is away, and the history that held them forgotten: its
    // resourceVersion is too old when it comes back (410), and it lists again.
    await api.stop();
    put('third', '4');
    api.compactHistory();
    await api.start();
    await until('ADDED third=4');
    t.true(seen.filter((l) => l.startsWith('ADDED first=')).length >= 2, 'listed again after 410');
  } finally {
    subscription.unsubscribe();
  }
});

test('a stored certificate is reused while it is good, never when it expired or does not match its key', async (t) => {
  const store = new CertificateStore(join(dir, 'certs'), 'tunnel-agent-c1');
  const none = await store.load();
  t.true('unusable' in none && /no stored certificate/.test(none.unusable));
  const ca = createCa('store CA');
  const pair = issueCertificate(ca, { commonName: 'tunnel:agent:c1', usage: 'client', lifetimeSeconds: 3600 });
  const saved = await store.save(`${pair.certPem}${ca.certPem}`, pair.keyPem);
  const current = join(dir, 'certs', 'tunnel-agent-c1-current.pem');
  t.true(lstatSync(current).isSymbolicLink());
  t.regex(readlinkSync(current), /^tunnel-agent-c1-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{3}\.pem$/);
  t.is(statSync(saved.path).mode & 0o777, 0o600);
  const loaded = await store.load();
  t.true('certPem' in loaded && loaded.certPem.includes(ca.certPem.trim()), 'the chain is kept');
  const expired = await store.load(Date.now() + 2 * 3600_000);
  t.true('unusable' in expired && /expired at/.test(expired.unusable));
  const other = issueCertificate(ca, { commonName: 'x', usage: 'client' });
  writeFileSync(saved.path, `${pair.certPem}${other.keyPem}`, { mode: 0o600 });
  const mismatched = await store.load();
  t.true('unusable' in mismatched && /its key does not belong to its certificate/.test(mismatched.unusable));
  // Saving again points the symlink at a new file; the one before stays, older ones go.
  for (let i = 0; i < 3; i++) await store.save(pair.certPem, pair.keyPem, new Date(Date.now() + i * 1000));
  t.is(readdirSync(join(dir, 'certs')).filter((n) => /\d\.pem$/.test(n)).length, 2, 'the current file and the one before it');
});
