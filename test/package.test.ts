/**
 * The package as its users get it: what `npm pack` ships, that every entry point loads and
 * is typed, that dependencies follow use, that the layers import only downwards, and that
 * the binaries (not the library) set process-wide policy.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { getDefaultHighWaterMark } from 'node:stream';
import { builtinModules } from 'node:module';
import os from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { ROOT } from './helpers/paths.js';
import { run, workspace } from './helpers/system.js';

const execFileAsync = promisify(execFile);
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  name: string;
  exports: Record<string, string | { types: string; default: string }>;
  bin: Record<string, string>;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  optionalDependencies?: Record<string, string>;
};

function filesUnder(dir: string, ext: RegExp): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && ext.test(e.name))
    .map((e) => join(e.parentPath, e.name));
}

/** Import specifiers of a source or compiled file: static, dynamic, and require() (createRequire's too). */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]|(?:import|require|\))\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => (m[1] ?? m[2]));
}

test('npm pack ships the library and the binaries with their types, and nothing of the tests, bench or demo', async (t) => {
  const { stdout } = await execFileAsync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT });
  const files = (JSON.parse(stdout) as Array<{ files: Array<{ path: string }> }>)[0].files.map((f) => f.path);
  t.deepEqual(files.filter((f) => !/^(dist\/lib\/|dist\/bin\/|proto\/|README\.md$|package\.json$)/.test(f)), [], 'only dist/lib, dist/bin, proto, README and package.json');
  t.deepEqual(files.filter((f) => f.endsWith('.map')), [], 'no source maps of sources that are not shipped');
  for (const [entry, target] of Object.entries(pkg.exports)) {
    if (typeof target === 'string') continue;
    t.true(files.includes(target.default.slice(2)), `${entry}: ${target.default} is shipped`);
    t.true(files.includes(target.types.slice(2)), `${entry}: ${target.types} is shipped`);
  }
  for (const [name, path] of Object.entries(pkg.bin)) t.true(files.includes(path), `bin ${name}: ${path} is shipped`);
});

test('every entry point loads by its package name', async (t) => {
  for (const entry of Object.keys(pkg.exports).filter((e) => e !== './package.json')) {
    const specifier = entry === '.' ? pkg.name : `${pkg.name}/${entry.slice(2)}`;
    const mod = await import(specifier) as Record<string, unknown>;
    t.true(Object.keys(mod).length > 0, `${specifier} exports something`);
  }
  const main = await import(pkg.name) as Record<string, unknown>;
  for (const name of ['dialHttpConnect', 'dialGrpc', 'TunnelHttpAgent', 'TunnelServer', 'TunnelAgent', 'FileTlsSource']) t.is(typeof main[name], 'function', name);
});

test('a TypeScript program that uses the package type-checks against its declarations', async (t) => {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-consumer-'));
  try {
    mkdirSync(join(dir, 'node_modules'));
    symlinkSync(ROOT, join(dir, 'node_modules', pkg.name));
    symlinkSync(join(ROOT, 'node_modules', '@types'), join(dir, 'node_modules', '@types'));
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
      // skipLibCheck as tsc --init sets it: @kubernetes/client-node's own declarations need @types/ws.
      compilerOptions: { strict: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', noEmit: true, skipLibCheck: true, types: ['node'] },
      files: ['consumer.ts'],
    }));
    writeFileSync(join(dir, 'consumer.ts'), `
import https from 'node:https';
import { dialHttpConnect, TunnelHttpAgent, createTunnelDialer, type TunnelConnection } from '${pkg.name}/client';
import { FileTlsSource, type TlsSource } from '${pkg.name}/pki';
import { TunnelServer } from '${pkg.name}/server';
import { DEFAULT_SERVER_PORT } from '${pkg.name}';

export async function example(tls: TlsSource): Promise<void> {
  const socket = await dialHttpConnect({ host: '127.0.0.1', port: DEFAULT_SERVER_PORT, tls }, 'c1:443');
  socket.end();
  const agent = new TunnelHttpAgent(createTunnelDialer({ mode: 'grpc', proxy: { uds: '/run/tunnel.sock' } }));
  https.get({ host: 'c1', agent });
  const conn: TunnelConnection | undefined = undefined;
  void conn;
  const source: TlsSource = await FileTlsSource.load({ ca: 'ca.crt', cert: 'c.crt', key: 'c.key', role: 'client' });
  void source;
  void TunnelServer;
}
// @ts-expect-error: the types say what a dial takes
void dialHttpConnect({ host: 1 }, 'c1:443');
`);
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    await t.notThrowsAsync(execFileAsync(process.execPath, [tsc, '-p', dir]).catch((err: Error & { stdout?: string }) => { throw new Error(err.stdout || err.message); }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('dependencies follow use: what the shipped code imports is a dependency, and every dependency is imported there', (t) => {
  const shipped = [...filesUnder(join(ROOT, 'dist', 'lib'), /\.js$/), ...filesUnder(join(ROOT, 'dist', 'bin'), /\.js$/)];
  const packages = new Set<string>();
  for (const file of shipped) {
    for (const spec of importsOf(file)) {
      if (spec.startsWith('.') || spec.startsWith('node:') || builtinModules.includes(spec)) continue;
      packages.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]);
    }
  }
  const declared = new Set([...Object.keys(pkg.dependencies), ...Object.keys(pkg.optionalDependencies ?? {})]);
  t.deepEqual([...packages].filter((p) => !declared.has(p)).sort(), [], 'imported by the shipped code but not a dependency');
  t.deepEqual([...declared].filter((p) => !packages.has(p)).sort(), [], 'a dependency that the shipped code never imports belongs in devDependencies');
});

test('layers import downwards only', (t) => {
  const problems: string[] = [];
  const rules: Array<{ from: RegExp; forbid: RegExp; why: string }> = [
    { from: /^lib\//, forbid: /^(test|bench|demo|harness|bin)\//, why: 'the library stands alone' },
    { from: /^bench\//, forbid: /^test\//, why: 'the bench shares helpers with the tests through harness/' },
    { from: /^harness\//, forbid: /^(test|bench)\//, why: 'the harness is beneath both' },
    { from: /^lib\/(wire|mux)\//, forbid: /^lib\/(server|agent|client|pki|cli|kube|hooks)\//, why: 'wire and mux know no role' },
    { from: /^lib\/(?!cli\/)/, forbid: /^lib\/cli\//, why: 'only the binaries parse command lines' },
    { from: /^bin\/tunnel-agent/, forbid: /^lib\/server\//, why: 'the agent binary needs nothing of the server' },
  ];
  for (const dir of ['lib', 'bin', 'bench', 'harness', 'demo', 'test']) {
    for (const file of filesUnder(join(ROOT, dir), /\.ts$/)) {
      const from = relative(ROOT, file);
      if (from.startsWith('lib/wire/gen/')) continue;
      for (const spec of importsOf(file).filter((s) => s.startsWith('.'))) {
        const to = relative(ROOT, join(file, '..', spec));
        for (const rule of rules) if (rule.from.test(from) && rule.forbid.test(to)) problems.push(`${from} imports ${to}: ${rule.why}`);
      }
    }
  }
  t.deepEqual(problems, []);
});

test.serial('the library sets no process-wide policy; the binaries do, each behind a flag', async (t) => {
  const { TunnelServer } = await import(pkg.name) as typeof import('../lib/index.js');
  const { localPkiTlsSource } = await import(`${pkg.name}/pki`) as typeof import('../lib/pki/index.js');
  const ws = await workspace();
  const before = getDefaultHighWaterMark(false);
  const server = new TunnelServer({ bindAddress: '127.0.0.1', agentPort: 0, healthBindAddress: '127.0.0.1', tls: await localPkiTlsSource(ws.pki, 'server'), proxyStrategies: ['destHost'] });
  try {
    await server.start();
    t.is(getDefaultHighWaterMark(false), before, 'an embedded server leaves the socket defaults alone');
  } finally {
    await server.stop();
  }
  for (const [flags, expected] of [[[], /process policy processTuning=on reclaimMemory=on/], [['--process-tuning=false', '--reclaim-memory=false'], /process policy processTuning=off reclaimMemory=off/]] as const) {
    const proc = run('tunnel-server', [`--state-dir=${ws.dir}`, '--bind-address=127.0.0.1', '--agent-port=0', '--reverse-proxy-port=off', '--server-port=off', '--health-port=off', ...flags]);
    try {
      await proc.waitFor(/tunnel server started/);
      t.regex(proc.output, expected);
    } finally {
      await proc.stop();
    }
  }
  ws.cleanup();
});
