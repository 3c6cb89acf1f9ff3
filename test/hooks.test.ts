/**
 * Agent start hooks: pre- and post-start hooks in order, the abort, retry and warn failure
 * policies with back-off and per-attempt timeouts, shutdown that never waits for a hook,
 * `--hook-option` parsing, providers by name and hook modules from files, and the tkestack
 * provider against the Kubernetes API double (create, update, another cluster untouched,
 * the label fallback of CRD mode, a rotated token file, conflicts, RBAC errors), with a log
 * that never holds the token.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';
import { startKubeApi, type KubeApiDouble } from '../harness/kube-api/index.js';
import { logger, setLogLevel, type LogLevel } from '../lib/observe/log.js';
import { UsageError } from '../lib/common/errors.js';
import {
  AgentHookError, CLUSTER_NAME_LABEL, loadHookProvider, parseHookOptions, runPostStartHooks, runPreStartHooks, tkestackHook,
  type AgentHook, type HookContext, type RunHooksOptions,
} from '../lib/agent/hooks/index.js';

const CC = ['platform.tkestack.io', 'clustercredentials'] as const;
const CLUSTER_CREDENTIAL_TYPE = {
  group: 'platform.tkestack.io', version: 'v1', resource: 'clustercredentials', kind: 'ClusterCredential', namespaced: false, shortNames: ['cc'],
};
const HUB_USER = 'system:serviceaccount:tunnel-system:tunnel-agent';
const CC_RULES = [{ verbs: ['get', 'list', 'create', 'update'], apiGroups: ['platform.tkestack.io'], resources: ['clustercredentials'] }];

const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-hooks-'));
/** The tkestack API as an aggregated API server serves it: clusterName and tenantID are selectable. */
let hub: KubeApiDouble;
/** tkestack in CRD mode: no selectable fields, so fieldSelector clusterName is a 400. */
let crdHub: KubeApiDouble;
let managedCaPem: string;
let otherCaPem: string;

const stderrLines: string[] = [];
const realStderrWrite = process.stderr.write.bind(process.stderr);
let previousLevel: LogLevel;

test.before(async () => {
  previousLevel = (process.env.TUNNEL_LOG_LEVEL as LogLevel | undefined) ?? 'info';
  setLogLevel('debug');
  process.stderr.write = ((chunk: string | Uint8Array) => {
    stderrLines.push(...String(chunk).split('\n').filter((l) => l !== ''));
    return true;
  });
  hub = await startKubeApi();
  hub.registerResource({ ...CLUSTER_CREDENTIAL_TYPE, selectableFields: ['clusterName', 'tenantID'] });
  crdHub = await startKubeApi();
  crdHub.registerResource(CLUSTER_CREDENTIAL_TYPE);
  for (const api of [hub, crdHub]) {
    api.addToken('hub-agent', { username: HUB_USER });
    api.grant({ user: HUB_USER }, CC_RULES);
  }
  managedCaPem = crdHub.caPem;
  otherCaPem = hub.caPem;
});

test.after.always(async () => {
  process.stderr.write = realStderrWrite;
  setLogLevel(previousLevel);
  await hub?.close();
  await crdHub?.close();
  rmSync(dir, { recursive: true, force: true });
});

let logCount = 0;
/** A logger of its own for one test, and the lines it (and its children) wrote. */
function testLog() {
  const component = `hooks-test-${++logCount}`;
  return {
    log: logger(component),
    lines: () => stderrLines.filter((line) => line.includes(` ${component}]`) || line.includes(` ${component}/`)),
  };
}

function context(overrides: Partial<HookContext> & { options?: Map<string, string>; clusterName?: string } = {}) {
  const controller = new AbortController();
  const { log, lines } = testLog();
  const { options, clusterName, ...rest } = overrides;
  const ctx: HookContext = {
    config: { clusterName: clusterName ?? 'c1', agentID: 'agent-1', serverAddress: '127.0.0.1:10262', options: options ?? new Map() },
    hub: undefined,
    managed: undefined,
    log,
    signal: controller.signal,
    ...rest,
  };
  return { ctx, controller, lines };
}

function moduleFile(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

const FAST: RunHooksOptions = { backoff: { initialMs: 10, factor: 2, maxMs: 40, jitter: 0 } };

// ------------------------------------------------------------------------------------------
// The runner

test('pre-start functions run in the list\'s order, one at a time, then post-start functions in that order', async (t) => {
  const events: string[] = [];
  const step = (name: string, ms: number) => async () => {
    events.push(`${name} start`);
    await sleep(ms);
    events.push(`${name} end`);
  };
  const hooks: AgentHook[] = [
    { name: 'a', preStart: step('a pre', 40), postStart: step('a post', 30) },
    { name: 'b', preStart: step('b pre', 1) },
    { name: 'c', postStart: step('c post', 1) },
    { name: 'd', preStart: step('d pre', 20), postStart: step('d post', 1) },
  ];
  const { ctx } = context();
  t.deepEqual(await runPreStartHooks(hooks, ctx), { cancelled: false, failed: [] });
  t.deepEqual(events, ['a pre start', 'a pre end', 'b pre start', 'b pre end', 'd pre start', 'd pre end']);
  events.length = 0;
  t.deepEqual(await runPostStartHooks(hooks, ctx), { cancelled: false, failed: [] });
  t.deepEqual(events, ['a post start', 'a post end', 'c post start', 'c post end', 'd post start', 'd post end']);
});

test('a hook receives the agent\'s config, its own logger and a live signal', async (t) => {
  let seen: HookContext | undefined;
  const { ctx, lines } = context({ options: new Map([['k', 'v']]), clusterName: 'east' });
  await runPreStartHooks([{ name: 'inspect', async preStart(c) { seen = c; c.log.info('hello from the hook'); } }], ctx);
  t.is(seen?.config.clusterName, 'east');
  t.is(seen?.config.agentID, 'agent-1');
  t.is(seen?.config.serverAddress, '127.0.0.1:10262');
  t.is(seen?.config.options.get('k'), 'v');
  t.false(seen?.signal.aborted);
  t.true(lines().some((l) => /\/inspect\] hello from the hook/.test(l)), lines().join('\n'));
});

test('abort: the first failing hook stops the phase with an error naming it and what it said', async (t) => {
  const ran: string[] = [];
  const hooks: AgentHook[] = [
    { name: 'quota', async preStart() { throw new Error('no quota left in project p1'); } },
    { name: 'after', async preStart() { ran.push('after'); } },
  ];
  const { ctx } = context();
  const err = await t.throwsAsync(runPreStartHooks(hooks, ctx), { instanceOf: AgentHookError });
  t.is(err?.hook, 'quota');
  t.is(err?.phase, 'pre-start');
  t.is(err?.message, 'the pre-start hook "quota" failed: no quota left in project p1; the agent does not connect (the hook\'s failure policy is abort)');
  t.deepEqual(ran, []);

  const post = await t.throwsAsync(runPostStartHooks([{ name: 'report', failurePolicy: 'abort', postStart: () => Promise.reject(new Error('hub said no')) }], ctx), { instanceOf: AgentHookError });
  t.regex(post?.message ?? '', /^the post-start hook "report" failed: hub said no; the agent stops/);
});

test('retry: a hook that fails twice succeeds on the third attempt, after back-off delays that double, each failure logged at warn', async (t) => {
  const calls: number[] = [];
  const hook: AgentHook = {
    name: 'flaky',
    failurePolicy: 'retry',
    async postStart() {
      calls.push(Date.now());
      if (calls.length < 3) throw new Error(`hub unreachable (try ${calls.length})`);
    },
  };
  const { ctx, lines } = context();
  const result = await runPostStartHooks([hook], ctx, { backoff: { initialMs: 60, factor: 2, maxMs: 1_000, jitter: 0 } });
  t.deepEqual(result, { cancelled: false, failed: [] });
  t.is(calls.length, 3);
  t.true(calls[1] - calls[0] >= 55, `first delay ${calls[1] - calls[0]}ms`);
  t.true(calls[2] - calls[1] >= 115, `second delay ${calls[2] - calls[1]}ms`);
  const warns = lines().filter((l) => l.startsWith('W '));
  t.is(warns.length, 2, lines().join('\n'));
  t.regex(warns[0], /agent hook failed; retrying hook=flaky phase=post-start attempt=1 in=60ms reason="hub unreachable \(try 1\)"/);
  t.regex(warns[1], /attempt=2 in=120ms reason="hub unreachable \(try 2\)"/);
  t.true(lines().some((l) => /agent hook done hook=flaky phase=post-start attempts=3/.test(l)));
});

test('retry: back-off doubles up to its cap', async (t) => {
  const calls: number[] = [];
  const { ctx, lines } = context();
  await runPreStartHooks([{
    name: 'capped', failurePolicy: 'retry',
    async preStart() {
      calls.push(Date.now());
      if (calls.length < 5) throw new Error('not yet');
    },
  }], ctx, FAST);
  const delays = lines().filter((l) => l.includes('retrying')).map((l) => /in=(\d+)ms/.exec(l)?.[1]);
  t.deepEqual(delays, ['10', '20', '40', '40']);
});

test('warn: a failing hook is logged and the phase goes on; a synchronous throw and a thrown non-error are failures too', async (t) => {
  const ran: string[] = [];
  // JavaScript may throw anything: a hook module that throws a number.
  const [odd] = await loadHookProvider(moduleFile('throws-number.mjs', 'export default { name: "odd", failurePolicy: "warn", async preStart() { throw 42; } };\n'), new Map());
  const hooks = [
    { name: 'broken', failurePolicy: 'warn', preStart: () => Promise.reject(new Error('cannot reach the metadata service')) },
    { name: 'sync', failurePolicy: 'warn', preStart() { throw new Error('thrown before any promise'); } },
    odd,
    { name: 'fine', async preStart() { ran.push('fine'); } },
  ] as AgentHook[];
  const { ctx, lines } = context();
  t.deepEqual(await runPreStartHooks(hooks, ctx), { cancelled: false, failed: ['broken', 'sync', 'odd'] });
  t.deepEqual(ran, ['fine']);
  const warns = lines().filter((l) => l.includes('going on without it'));
  t.regex(warns[0], /hook=broken phase=pre-start reason="cannot reach the metadata service"/);
  t.regex(warns[1], /hook=sync .*reason="thrown before any promise"/);
  t.regex(warns[2], /hook=odd .*reason="it threw 42"/);
});

test('a hook that never returns hits its timeout: under warn the phase goes on, and the attempt\'s signal is aborted', async (t) => {
  let signal: AbortSignal | undefined;
  const hang: AgentHook = { name: 'hang', failurePolicy: 'warn', timeoutMs: 50, preStart: (c) => { signal = c.signal; return new Promise(() => undefined); } };
  const { ctx, lines } = context();
  const started = Date.now();
  t.deepEqual(await runPreStartHooks([hang], ctx), { cancelled: false, failed: ['hang'] });
  t.true(Date.now() - started < 1_000);
  t.true(signal?.aborted);
  t.regex(String((signal?.reason as Error).message), /"hang" did not finish within 50ms/);
  t.false(ctx.signal.aborted, 'the agent\'s own signal is not aborted');
  t.true(lines().some((l) => /going on without it hook=hang .*reason="did not finish within 50ms/.test(l)), lines().join('\n'));
});

test('a hook that never returns hits its timeout: under abort the error says so, under retry the next attempt runs', async (t) => {
  const { ctx } = context();
  const err = await t.throwsAsync(runPreStartHooks([{ name: 'stuck', timeoutMs: 30, preStart: () => new Promise(() => undefined) }], ctx), { instanceOf: AgentHookError });
  t.regex(err?.message ?? '', /the pre-start hook "stuck" failed: did not finish within 30ms \(the hook's timeout for one attempt\)/);

  const signals: AbortSignal[] = [];
  const onceStuck: AgentHook = {
    name: 'once-stuck', failurePolicy: 'retry', timeoutMs: 40,
    postStart: (c) => {
      signals.push(c.signal);
      return signals.length === 1 ? new Promise(() => undefined) : Promise.resolve();
    },
  };
  t.deepEqual(await runPostStartHooks([onceStuck], ctx, FAST), { cancelled: false, failed: [] });
  t.is(signals.length, 2);
  t.true(signals[0].aborted, 'the timed-out attempt\'s signal is aborted');
  t.false(signals[1].aborted, 'the successful attempt\'s signal stays live until shutdown');
});

test('shutdown ends a retrying hook and a hook that ignores its signal at once; later hooks do not run', async (t) => {
  const ran: string[] = [];
  {
    const { ctx, controller } = context();
    let failures = 0;
    const run = runPostStartHooks([
      { name: 'forever', failurePolicy: 'retry', async postStart() { failures++; throw new Error('still failing'); } },
      { name: 'next', async postStart() { ran.push('next'); } },
    ], ctx, { backoff: { initialMs: 60_000 } });
    await sleep(30);
    const stopAt = Date.now();
    controller.abort();
    t.deepEqual(await run, { cancelled: true, failed: [] });
    t.true(Date.now() - stopAt < 500);
    t.is(failures, 1);
  }
  {
    const { ctx, controller, lines } = context();
    let signal: AbortSignal | undefined;
    const run = runPreStartHooks([
      { name: 'deaf', preStart: (c) => { signal = c.signal; return new Promise(() => undefined); } },
      { name: 'next', async preStart() { ran.push('next'); } },
    ], ctx);
    await sleep(30);
    const stopAt = Date.now();
    controller.abort();
    t.deepEqual(await run, { cancelled: true, failed: [] });
    t.true(Date.now() - stopAt < 500, 'the default 30 s timeout is not waited for');
    t.true(signal?.aborted);
    t.true(lines().some((l) => /agent hook given up: the agent is shutting down hook=deaf/.test(l)));
  }
  {
    const { ctx, controller } = context();
    controller.abort();
    t.deepEqual(await runPreStartHooks([{ name: 'never', async preStart() { ran.push('never'); } }], ctx), { cancelled: true, failed: [] });
  }
  t.deepEqual(ran, []);
});

// ------------------------------------------------------------------------------------------
// Options and providers

test('parseHookOptions: KEY=VALUE into a map; a value may be empty or hold "="; a value without "=" or a key given twice is a usage error', (t) => {
  const options = parseHookOptions(['cluster-name=east', 'tenant-id=', 'query=a=b']);
  t.deepEqual([...options], [['cluster-name', 'east'], ['tenant-id', ''], ['query', 'a=b']]);
  t.is(parseHookOptions([]).size, 0);
  t.throws(() => parseHookOptions(['cluster-name']), { instanceOf: UsageError, message: '--hook-option "cluster-name" is not KEY=VALUE: give each option as --hook-option KEY=VALUE, e.g. --hook-option cluster-name=cluster-a' });
  t.throws(() => parseHookOptions(['=x']), { instanceOf: UsageError, message: /--hook-option "=x" is not KEY=VALUE/ });
  t.throws(() => parseHookOptions(['a=1', 'a=2']), { instanceOf: UsageError, message: '--hook-option a is given twice: give each key once' });
});

test('providers by name: none gives no hooks, tkestack one post-start hook that retries, anything else is an error', async (t) => {
  t.deepEqual(await loadHookProvider('none', new Map()), []);
  await t.throwsAsync(loadHookProvider('none', new Map([['tenant-id', 't']])), { instanceOf: UsageError, message: /--hook-option tenant-id given, but --hook-provider is none/ });
  const [hook, ...more] = await loadHookProvider('tkestack', new Map([['tenant-id', 'default'], ['cluster-name', 'east']]));
  t.deepEqual(more, []);
  t.is(hook.name, 'tkestack');
  t.is(hook.failurePolicy, 'retry');
  t.false('preStart' in hook);
  t.true('postStart' in hook && typeof hook.postStart === 'function');
  await t.throwsAsync(loadHookProvider('tkestack', new Map([['tenant', 'x']])), { instanceOf: UsageError, message: /--hook-provider=tkestack takes no option tenant: it takes cluster-name .*, tenant-id/ });
  await t.throwsAsync(loadHookProvider('clusternet', new Map()), { instanceOf: UsageError, message: /unknown hook provider "clusternet": give none, tkestack, or the path of a hook module/ });
});

test('a hook module that throws at import, exports nothing usable, or is missing gives an error naming the path and what was expected', async (t) => {
  const throwing = moduleFile('throws.mjs', 'throw new Error("the hook module is broken");\n');
  await t.throwsAsync(loadHookProvider(throwing, new Map()), { instanceOf: UsageError, message: `the hook module ${throwing} cannot be loaded: the hook module is broken; fix the module (it must be JavaScript that Node can import)` });

  const nothing = moduleFile('nothing.mjs', 'export const version = 3;\n');
  const err = await t.throwsAsync(loadHookProvider(nothing, new Map()), { instanceOf: UsageError });
  t.regex(err?.message ?? '', new RegExp(`^the hook module ${nothing} exports no hooks: expected a module whose \`default\` or \`hooks\` export is a hook .*, an array of hooks, or a function \\(options\\) => hook\\(s\\); it exports version \\(a number\\)$`));

  const nameless = moduleFile('nameless.mjs', 'export default { preStart: async () => {} };\n');
  await t.throwsAsync(loadHookProvider(nameless, new Map()), { instanceOf: UsageError, message: `the hook module ${nameless}: its hook has no name: give it name: '...'` });
  const badPolicy = moduleFile('bad-policy.mjs', 'export const hooks = [{ name: "x", failurePolicy: "ignore", postStart: async () => {} }];\n');
  await t.throwsAsync(loadHookProvider(badPolicy, new Map()), { instanceOf: UsageError, message: /the hook "x" has failurePolicy "ignore": give one of abort, retry, warn/ });
  const noFunctions = moduleFile('no-functions.mjs', 'export default [{ name: "idle" }];\n');
  await t.throwsAsync(loadHookProvider(noFunctions, new Map()), { instanceOf: UsageError, message: /the hook "idle" has neither preStart nor postStart/ });
  const notAHook = moduleFile('string.mjs', 'export default "tkestack";\n');
  await t.throwsAsync(loadHookProvider(notAHook, new Map()), { instanceOf: UsageError, message: /its hook is a string, not a hook: expected a module whose/ });

  const missing = join(dir, 'missing.mjs');
  await t.throwsAsync(loadHookProvider(missing, new Map()), { instanceOf: UsageError, message: `the hook module ${missing} does not exist: give the path of a JavaScript module, absolute or relative to ${process.cwd()}` });
});

test('a hook module relative to the working directory: its factory gets the hook options, and its hooks run', async (t) => {
  const path = moduleFile('works.mjs', [
    'export default (options) => [',
    '  { name: "from-module", failurePolicy: "warn", async preStart(ctx) { globalThis.hookModuleCalls.push(["pre", options.get("greeting"), ctx.config.clusterName]); } },',
    '  { name: "second", async postStart() { globalThis.hookModuleCalls.push(["post"]); } },',
    '];',
    '',
  ].join('\n'));
  const calls: unknown[] = [];
  (globalThis as { hookModuleCalls?: unknown[] }).hookModuleCalls = calls;
  const spec = relative(process.cwd(), path);
  t.false(spec.startsWith('/'));
  const hooks = await loadHookProvider(spec, new Map([['greeting', 'hello']]));
  t.deepEqual(hooks.map((h) => [h.name, h.failurePolicy]), [['from-module', 'warn'], ['second', undefined]]);
  const { ctx } = context({ clusterName: 'west' });
  await runPreStartHooks(hooks, ctx);
  await runPostStartHooks(hooks, ctx);
  t.deepEqual(calls, [['pre', 'hello', 'west'], ['post']]);

  const named = moduleFile('named.mjs', 'export const hooks = { name: "solo", postStart: async () => {} };\n');
  t.deepEqual((await loadHookProvider(named, new Map())).map((h) => h.name), ['solo']);
  const commonJs = moduleFile('common.cjs', 'module.exports = { hooks: [{ name: "cjs", preStart: async () => {} }] };\n');
  t.deepEqual((await loadHookProvider(commonJs, new Map())).map((h) => h.name), ['cjs']);
});

// ------------------------------------------------------------------------------------------
// tkestack

function hubConfig(api: KubeApiDouble, token = 'hub-agent'): KubeConfig {
  const config = new KubeConfig();
  config.loadFromString(api.kubeconfig({ token }));
  return config;
}

/** A hub user of one test, with the rights the hook needs, and the requests it made (tests run concurrently). */
function hubUser(api: KubeApiDouble, name: string) {
  const username = `system:serviceaccount:tunnel-system:${name}`;
  api.addToken(`token-${name}`, { username });
  api.grant({ user: username }, CC_RULES);
  let from = api.requests.length;
  return {
    config: hubConfig(api, `token-${name}`),
    /** The user's requests since the last call, as `METHOD path status`. */
    requests: () => {
      const made = api.requests.slice(from).filter((r) => r.user === username).map((r) => `${r.method} ${decodeURIComponent(r.path)} ${r.status}`);
      from = api.requests.length;
      return made;
    },
  };
}

/** The managed cluster's client as a kubeconfig holds it: its CA inline and a token. */
function managedConfig(token: string, caPem = managedCaPem): KubeConfig {
  const config = new KubeConfig();
  config.loadFromClusterAndUser(
    { name: 'managed', server: 'https://127.0.0.1:6443', caData: Buffer.from(caPem).toString('base64'), skipTLSVerify: false },
    { name: 'admin', token },
  );
  return config;
}

function credential(name: string, clusterName: string, fields: Record<string, unknown>): Record<string, unknown> {
  return {
    apiVersion: 'platform.tkestack.io/v1', kind: 'ClusterCredential',
    metadata: { name, labels: { [CLUSTER_NAME_LABEL]: clusterName } },
    clusterName, ...fields,
  };
}

function credentialsOf(api: KubeApiDouble, clusterName: string) {
  return api.objects.list(...CC).filter((o) => o.clusterName === clusterName);
}

function assertNoToken(t: ExecutionContext, lines: string[], token: string): void {
  t.true(lines.length > 0, 'the hook logged');
  for (const line of lines) t.false(line.includes(token), `a log line holds the token: ${line}`);
}

test('tkestack: creates the ClusterCredential when the cluster has none, then finds it up to date', async (t) => {
  const token = 'managed-admin-token-create-7f3a';
  const hooks = await loadHookProvider('tkestack', new Map([['tenant-id', 'default']]));
  const user = hubUser(hub, 'agent-fresh');
  const { ctx, lines } = context({ clusterName: 'fresh', hub: user.config, managed: managedConfig(token) });
  t.deepEqual(await runPostStartHooks(hooks, ctx), { cancelled: false, failed: [] });
  const [created, ...more] = credentialsOf(hub, 'fresh');
  t.deepEqual(more, []);
  const metadata = created.metadata as { name: string; labels: Record<string, string> };
  t.regex(metadata.name, /^cc-[a-z0-9]{5}$/);
  t.deepEqual(metadata.labels, { [CLUSTER_NAME_LABEL]: 'fresh' });
  t.is(created.tenantID, 'default');
  t.is(created.token, token);
  t.is(created.caCert, Buffer.from(managedCaPem).toString('base64'));
  t.is(Buffer.from(created.caCert as string, 'base64').toString(), managedCaPem);
  t.deepEqual(user.requests(), [
    'GET /apis/platform.tkestack.io/v1/clustercredentials?fieldSelector=clusterName=fresh 200',
    'POST /apis/platform.tkestack.io/v1/clustercredentials 201',
  ]);
  t.true(lines().some((l) => new RegExp(`created the cluster credential credential=${metadata.name} cluster=fresh tenantID=default`).test(l)), lines().join('\n'));

  await runPostStartHooks(hooks, ctx);
  t.deepEqual(user.requests(), ['GET /apis/platform.tkestack.io/v1/clustercredentials?fieldSelector=clusterName=fresh 200'], 'nothing changed, nothing is written');
  t.true(lines().some((l) => new RegExp(`the cluster credential is up to date credential=${metadata.name} cluster=fresh`).test(l)));
  assertNoToken(t, lines(), token);
});

test('tkestack: updates the token of the credential found by clusterName, and leaves another cluster\'s credential untouched', async (t) => {
  const token = 'managed-admin-token-update-91bc';
  hub.objects.put(...CC, credential('cc-east1', 'east', { tenantID: 'default', token: 'stale-token', caCert: Buffer.from(managedCaPem).toString('base64'), username: 'admin' }));
  hub.objects.put(...CC, credential('cc-west1', 'west', { tenantID: 'default', token: 'west-token', caCert: Buffer.from(otherCaPem).toString('base64') }));
  const westBefore = hub.objects.get(...CC, 'cc-west1');
  const user = hubUser(hub, 'agent-east');
  const { ctx, lines } = context({ clusterName: 'east', hub: user.config, managed: managedConfig(token) });
  await runPostStartHooks([tkestackHook()], ctx);
  const east = hub.objects.get(...CC, 'cc-east1')!;
  t.is(east.token, token);
  t.is(east.caCert, Buffer.from(managedCaPem).toString('base64'));
  t.is(east.username, 'admin', 'fields the hook does not own are kept');
  t.is(east.tenantID, 'default');
  t.deepEqual(hub.objects.get(...CC, 'cc-west1'), westBefore);
  t.deepEqual(credentialsOf(hub, 'east').length, 1, 'no second credential is created');
  t.deepEqual(user.requests(), [
    'GET /apis/platform.tkestack.io/v1/clustercredentials?fieldSelector=clusterName=east 200',
    'PUT /apis/platform.tkestack.io/v1/clustercredentials/cc-east1 200',
  ]);
  t.true(lines().some((l) => /updated the cluster credential credential=cc-east1 cluster=east tokenChanged=true caChanged=false/.test(l)), lines().join('\n'));

  // A new CA with the same token: only the CA changes.
  const { ctx: ctx2, lines: lines2 } = context({ clusterName: 'east', hub: hubConfig(hub), managed: managedConfig(token, otherCaPem) });
  await runPostStartHooks([tkestackHook()], ctx2);
  t.is(hub.objects.get(...CC, 'cc-east1')!.caCert, Buffer.from(otherCaPem).toString('base64'));
  t.true(lines2().some((l) => /updated the cluster credential credential=cc-east1 cluster=east tokenChanged=false caChanged=true/.test(l)), lines2().join('\n'));
  assertNoToken(t, [...lines(), ...lines2()], token);
});

test('tkestack: the cluster-name option overrides the agent\'s cluster name', async (t) => {
  const token = 'managed-admin-token-override-22d0';
  const hooks = await loadHookProvider('tkestack', new Map([['cluster-name', 'renamed']]));
  const { ctx } = context({ clusterName: 'agent-name', hub: hubConfig(hub), managed: managedConfig(token) });
  await runPostStartHooks(hooks, ctx);
  t.is(credentialsOf(hub, 'renamed').length, 1);
  t.is(credentialsOf(hub, 'agent-name').length, 0);
});

test('tkestack: a hub without the clusterName field selector (CRD mode) is asked by label, and only once by field', async (t) => {
  const token = 'managed-admin-token-crd-5e11';
  crdHub.objects.put(...CC, credential('cc-north1', 'north', { token: 'old', caCert: Buffer.from(managedCaPem).toString('base64') }));
  crdHub.objects.put(...CC, credential('cc-south1', 'south', { token: 'south-token' }));
  const southBefore = crdHub.objects.get(...CC, 'cc-south1');
  const hook = tkestackHook();
  const user = hubUser(crdHub, 'agent-north');
  const { ctx, lines } = context({ clusterName: 'north', hub: user.config, managed: managedConfig(token) });
  await runPostStartHooks([hook], ctx);
  t.is(crdHub.objects.get(...CC, 'cc-north1')!.token, token);
  t.deepEqual(crdHub.objects.get(...CC, 'cc-south1'), southBefore);
  t.deepEqual(user.requests(), [
    'GET /apis/platform.tkestack.io/v1/clustercredentials?fieldSelector=clusterName=north 400',
    `GET /apis/platform.tkestack.io/v1/clustercredentials?labelSelector=${CLUSTER_NAME_LABEL}=north 200`,
    'PUT /apis/platform.tkestack.io/v1/clustercredentials/cc-north1 200',
  ]);
  t.true(lines().some((l) => /selecting by label label="tkestack.io\/cluster-name=north"/.test(l)), lines().join('\n'));

  // The same hook goes by label from then on, and creates by label where there is none.
  const { ctx: ctx2, lines: lines2 } = context({ clusterName: 'brand-new', hub: user.config, managed: managedConfig(token) });
  await runPostStartHooks([hook], ctx2);
  t.deepEqual(user.requests(), [
    `GET /apis/platform.tkestack.io/v1/clustercredentials?labelSelector=${CLUSTER_NAME_LABEL}=brand-new 200`,
    'POST /apis/platform.tkestack.io/v1/clustercredentials 201',
  ]);
  const [created] = credentialsOf(crdHub, 'brand-new');
  t.is((created.metadata as { labels: Record<string, string> }).labels[CLUSTER_NAME_LABEL], 'brand-new');
  t.false('tenantID' in created, 'no tenant-id option, no tenantID');
  assertNoToken(t, [...lines(), ...lines2()], token);
});

test('tkestack: an in-cluster token file is read as it is now, so a rotated token is reported', async (t) => {
  const tokenFile = join(dir, 'sa-token');
  const caFile = join(dir, 'sa-ca.crt');
  writeFileSync(tokenFile, 'rotating-token-v1-a0a0');
  writeFileSync(caFile, managedCaPem);
  const managed = new KubeConfig();
  managed.loadFromClusterAndUser(
    { name: 'inCluster', server: 'https://127.0.0.1:6443', caFile, skipTLSVerify: false },
    { name: 'inClusterUser', authProvider: { name: 'tokenFile', config: { tokenFile } } },
  );
  const hooks = [tkestackHook()];
  const { ctx, lines } = context({ clusterName: 'rotating', hub: hubConfig(hub), managed });
  await runPostStartHooks(hooks, ctx);
  t.is(credentialsOf(hub, 'rotating')[0].token, 'rotating-token-v1-a0a0');
  t.is(credentialsOf(hub, 'rotating')[0].caCert, Buffer.from(managedCaPem).toString('base64'));
  writeFileSync(tokenFile, 'rotating-token-v2-b1b1\n');
  await runPostStartHooks(hooks, ctx);
  const [updated, ...more] = credentialsOf(hub, 'rotating');
  t.deepEqual(more, []);
  t.is(updated.token, 'rotating-token-v2-b1b1');
  t.true(lines().some((l) => /updated the cluster credential .*cluster=rotating tokenChanged=true caChanged=false/.test(l)));
  assertNoToken(t, lines(), 'rotating-token-v1-a0a0');
  assertNoToken(t, lines(), 'rotating-token-v2-b1b1');
});

test('tkestack: a credential changed by someone else between read and write is read again, and their change is kept', async (t) => {
  const token = 'managed-admin-token-conflict-3c3c';
  hub.objects.put(...CC, credential('cc-busy1', 'busy', { token: 'old' }));
  const user = hubUser(hub, 'agent-busy');
  const config = user.config;
  const makeApiClient = config.makeApiClient.bind(config);
  let interfered = false;
  config.makeApiClient = ((type: typeof CustomObjectsApi) => {
    const client = makeApiClient(type);
    const replace = client.replaceClusterCustomObject.bind(client);
    client.replaceClusterCustomObject = async (param, options) => {
      if (!interfered) {
        interfered = true;
        const current = hub.objects.get(...CC, 'cc-busy1')!;
        hub.objects.put(...CC, { ...current, username: 'set-by-the-platform' });
      }
      return replace(param, options) as Promise<unknown>;
    };
    return client;
  }) as typeof config.makeApiClient;
  const { ctx, lines } = context({ clusterName: 'busy', hub: config, managed: managedConfig(token) });
  t.deepEqual(await runPostStartHooks([tkestackHook({ failurePolicy: 'abort' })], ctx), { cancelled: false, failed: [] });
  const busy = hub.objects.get(...CC, 'cc-busy1')!;
  t.is(busy.token, token);
  t.is(busy.username, 'set-by-the-platform');
  t.deepEqual(user.requests().map((r) => r.replace(/ \/\S+/, '')), ['GET 200', 'PUT 409', 'GET 200', 'PUT 200']);
  t.true(lines().some((l) => /the ClusterCredential changed meanwhile; reading it again cluster=busy/.test(l)));
  assertNoToken(t, lines(), token);
});

test('tkestack: without a hub, a cluster name or RBAC the hook fails in words an operator can act on, and never with the token', async (t) => {
  const token = 'managed-admin-token-errors-4d4d';
  const noHub = context({ clusterName: 'lonely', managed: managedConfig(token) });
  const err1 = await t.throwsAsync(runPostStartHooks([tkestackHook({ failurePolicy: 'abort' })], noHub.ctx), { instanceOf: AgentHookError });
  t.regex(err1?.message ?? '', /the post-start hook "tkestack" failed: the hook "tkestack" needs the hub's Kubernetes API, but the agent has no hub kubeconfig/);

  const noManaged = context({ clusterName: 'lonely', hub: hubConfig(hub) });
  const err2 = await t.throwsAsync(runPostStartHooks([tkestackHook({ failurePolicy: 'abort' })], noManaged.ctx), { instanceOf: AgentHookError });
  t.regex(err2?.message ?? '', /needs the managed cluster's Kubernetes API, .*give --managed-kubeconfig=FILE/);

  const noName = context({ hub: hubConfig(hub), managed: managedConfig(token) });
  noName.ctx.config.clusterName = undefined;
  const err3 = await t.throwsAsync(runPostStartHooks([tkestackHook({ failurePolicy: 'abort' })], noName.ctx), { instanceOf: AgentHookError });
  t.regex(err3?.message ?? '', /the agent has no cluster name: start the agent with --cluster-name, or give --hook-option cluster-name=NAME/);

  hub.addToken('unprivileged', { username: 'nobody' });
  const forbidden = context({ clusterName: 'denied', hub: hubConfig(hub, 'unprivileged'), managed: managedConfig(token) });
  const err4 = await t.throwsAsync(runPostStartHooks([tkestackHook({ failurePolicy: 'abort' })], forbidden.ctx), { instanceOf: AgentHookError });
  t.regex(err4?.message ?? '', /cannot list clustercredentials\.platform\.tkestack\.io at https:\/\/127\.0\.0\.1:\d+: forbidden: .*User "nobody" cannot list resource "clustercredentials" in API group "platform\.tkestack\.io" at the cluster scope; grant the caller "list" on resource "clustercredentials" in API group "platform\.tkestack\.io"/);
  for (const err of [err1, err2, err3, err4]) t.false(err?.message.includes(token));
});

test('tkestack: refused until the hub grants the rights, retried with the reason at warn, then created; the token is in no log line', async (t) => {
  const token = 'managed-admin-token-retry-5e5e';
  const user = 'system:serviceaccount:tunnel-system:late-agent';
  hub.addToken('late-agent', { username: user });
  const { ctx, lines } = context({ clusterName: 'late', hub: hubConfig(hub, 'late-agent'), managed: managedConfig(token) });
  const run = runPostStartHooks([tkestackHook()], ctx, { backoff: { initialMs: 20, factor: 2, maxMs: 50, jitter: 0 } });
  for (let i = 0; i < 200 && !lines().some((l) => l.includes('retrying')); i++) await sleep(10);
  hub.grant({ user }, CC_RULES);
  t.deepEqual(await run, { cancelled: false, failed: [] });
  t.is(credentialsOf(hub, 'late')[0].token, token);
  const warn = lines().find((l) => l.includes('agent hook failed; retrying'));
  t.regex(warn ?? '', /hook=tkestack phase=post-start attempt=1 in=20ms reason=".*cannot list clustercredentials.*forbidden/);
  assertNoToken(t, lines(), token);
  t.false(stderrLines.some((l) => l.includes(token)));
});
