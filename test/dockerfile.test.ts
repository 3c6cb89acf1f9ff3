/**
 * The Dockerfile without a container engine: its build stage is carried out in a temp dir from
 * exactly what it copies (with .dockerignore applied) and its own build command, so a source
 * the build needs but the image lacks fails here; then the runtime stage is checked against
 * what that build produced: what it copies, the binaries it puts on PATH, the user it runs
 * as, and that it installs no dev dependencies.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { accessSync, constants, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, posix, relative } from 'node:path';
import { promisify } from 'node:util';
import { loadAllYaml, type V1Deployment } from '@kubernetes/client-node';
import { ROOT } from './helpers/paths.js';

const execFileAsync = promisify(execFile);
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; bin: Record<string, string>; scripts: Record<string, string> };
const BASE_IMAGE = 'node:20-bookworm-slim';
const RUN_AS = '65532';
/** The node images' PATH. */
const IMAGE_PATH = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

// ---- the Dockerfile and .dockerignore -----------------------------------------------------------

interface Instruction {
  line: number;
  keyword: string;
  rest: string;
}

interface Stage {
  name?: string;
  image: string;
  instructions: Instruction[];
}

/** Instructions by stage, with continuation lines joined and comments dropped. */
function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (/^\s*(#|$)/.test(lines[i])) continue;
    const start = i;
    let logical = lines[i];
    while (logical.endsWith('\\') && i + 1 < lines.length) {
      i += 1;
      if (/^\s*#/.test(lines[i])) continue;
      logical = `${logical.slice(0, -1)} ${lines[i].trim()}`;
    }
    const match = /^\s*([A-Za-z]+)\s+(.*)$/.exec(logical);
    if (!match) throw new Error(`Dockerfile line ${start + 1} is not an instruction: ${logical}`);
    const instruction = { line: start + 1, keyword: match[1].toUpperCase(), rest: match[2].trim() };
    if (instruction.keyword === 'FROM') {
      const [image, as, name] = instruction.rest.split(/\s+/);
      stages.push({ image, name: as?.toUpperCase() === 'AS' ? name : undefined, instructions: [] });
    } else {
      if (stages.length === 0) throw new Error(`Dockerfile line ${start + 1}: ${instruction.keyword} before FROM`);
      stages.at(-1)!.instructions.push(instruction);
    }
  }
  return stages;
}

interface Copy {
  line: number;
  from?: string;
  sources: string[];
  destination: string;
}

function copyOf(instruction: Instruction): Copy {
  const words = instruction.rest.split(/\s+/);
  const flags = words.filter((w) => w.startsWith('--'));
  const paths = words.filter((w) => !w.startsWith('--'));
  const from = flags.find((f) => f.startsWith('--from='))?.slice('--from='.length);
  return { line: instruction.line, from, sources: paths.slice(0, -1), destination: paths.at(-1)! };
}

function workdirOf(stage: Stage, before: number): string {
  let dir = '/';
  for (const i of stage.instructions) if (i.keyword === 'WORKDIR' && i.line < before) dir = posix.resolve(dir, i.rest);
  return dir;
}

/** .dockerignore's rules as the Docker CLI applies them: the last matching pattern wins, `!` re-includes, a matched directory takes its contents along. */
function dockerignore(text: string): (path: string) => boolean {
  const rules = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')).map((line) => {
    const negate = line.startsWith('!');
    const pattern = posix.normalize((negate ? line.slice(1) : line).replace(/^\/+/, '')).replace(/\/+$/, '');
    const source = pattern.split('/').map((part) => (part === '**' ? '.*' : part.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]'))).join('/');
    return { negate, regex: new RegExp(`^${source.replace(/\.\*\//g, '(?:.*/)?')}$`) };
  });
  return (path: string) => {
    const parts = posix.normalize(path).split('/');
    const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
    let ignored = false;
    for (const rule of rules) if (candidates.some((c) => rule.regex.test(c))) ignored = !rule.negate;
    return ignored;
  };
}

const DOCKERFILE = join(ROOT, 'Dockerfile');
const stages = parseDockerfile(readFileSync(DOCKERFILE, 'utf8'));
const ignored = dockerignore(existsSync(join(ROOT, '.dockerignore')) ? readFileSync(join(ROOT, '.dockerignore'), 'utf8') : '');
const runtime = stages.at(-1)!;

function stageNamed(name: string): Stage | undefined {
  return stages.find((s) => s.name === name);
}

function instructions(stage: Stage, keyword: string): Instruction[] {
  return stage.instructions.filter((i) => i.keyword === keyword);
}

// ---- carrying out the build stage ---------------------------------------------------------------

interface BuiltStage {
  /** The temp dir standing in for the stage's WORKDIR. */
  dir: string;
  workdir: string;
}

/**
 * The stage's context COPYs into a temp dir (its WORKDIR), its RUN commands run there with sh,
 * except `npm ci`: node_modules is the repository's own, linked.
 */
async function carryOut(stage: Stage): Promise<BuiltStage> {
  const workdir = workdirOf(stage, Infinity);
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-docker-'));
  for (const instruction of stage.instructions) {
    if (instruction.keyword === 'WORKDIR' && posix.resolve(workdirOf(stage, instruction.line + 1)) !== workdir) throw new Error(`Dockerfile line ${instruction.line}: the stage changes WORKDIR; this test follows one WORKDIR per stage`);
    if (instruction.keyword === 'COPY') {
      const copy = copyOf(instruction);
      if (copy.from) throw new Error(`Dockerfile line ${copy.line}: the build stage copies from another stage`);
      const destination = posix.resolve(workdir, copy.destination);
      if (!destination.startsWith(workdir)) throw new Error(`Dockerfile line ${copy.line}: copies outside WORKDIR ${workdir}`);
      for (const source of copy.sources) {
        const target = copy.sources.length > 1 || copy.destination.endsWith('/') ? join(dir, relative(workdir, destination), posix.basename(source)) : join(dir, relative(workdir, destination));
        mkdirSync(dirname(target), { recursive: true });
        cpSync(join(ROOT, source), target, { recursive: true, filter: (from) => !ignored(relative(ROOT, from)) || from === ROOT });
      }
    }
    if (instruction.keyword === 'RUN') {
      if (/\bnpm ci\b/.test(instruction.rest)) {
        symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
        continue;
      }
      await execFileAsync('sh', ['-c', instruction.rest], { cwd: dir, maxBuffer: 16 * 1024 * 1024 }).catch((err: Error & { stdout?: string; stderr?: string }) => {
        rmSync(dir, { recursive: true, force: true });
        throw new Error(`Dockerfile line ${instruction.line} (RUN ${instruction.rest}) failed in a directory that holds only what the stage copies: copy what the command needs.\n${err.stdout ?? ''}${err.stderr ?? err.message}`);
      });
    }
  }
  return { dir, workdir };
}

let buildStage: Promise<BuiltStage> | undefined;
function builtStage(): Promise<BuiltStage> {
  const from = copiesOf(runtime).find((c) => c.from)?.from;
  const stage = from ? stageNamed(from) : undefined;
  if (!stage) throw new Error('the runtime stage copies nothing from a build stage');
  buildStage ??= carryOut(stage);
  return buildStage;
}

function copiesOf(stage: Stage): Copy[] {
  return instructions(stage, 'COPY').map(copyOf);
}

/** Image paths of the runtime stage and where each one's content is: the repository or the carried-out build stage. */
async function runtimeFiles(): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for (const copy of copiesOf(runtime)) {
    const workdir = workdirOf(runtime, copy.line);
    for (const source of copy.sources) {
      let host: string;
      if (copy.from) {
        const built = await builtStage();
        host = join(built.dir, posix.relative(built.workdir, source));
      } else {
        host = join(ROOT, source);
      }
      const destination = posix.resolve(workdir, copy.destination);
      files.set(copy.sources.length > 1 || copy.destination.endsWith('/') ? posix.join(destination, posix.basename(source)) : destination, host);
    }
  }
  return files;
}

function hostPathOf(files: Map<string, string>, imagePath: string): string | undefined {
  for (const [at, host] of files) {
    if (imagePath === at) return host;
    if (imagePath.startsWith(`${at}/`)) return join(host, imagePath.slice(at.length + 1));
  }
  return undefined;
}

/** `ln -s TARGET LINK` pairs of the runtime stage's RUN commands. */
function symlinksOf(stage: Stage): Map<string, string> {
  const links = new Map<string, string>();
  for (const run of instructions(stage, 'RUN')) for (const m of run.rest.matchAll(/\bln -s(?:f)?\s+(\S+)\s+(\S+)/g)) links.set(m[2], m[1]);
  return links;
}

test.after.always(async () => {
  const built = await buildStage?.catch(() => undefined);
  if (built) rmSync(built.dir, { recursive: true, force: true });
});

// ---- tests --------------------------------------------------------------------------------------

test('both stages are on node:20-bookworm-slim, and the build stage runs npm ci and npm run build', (t) => {
  t.is(stages.length, 2, 'a build stage and a runtime stage');
  for (const stage of stages) t.is(stage.image, BASE_IMAGE, `stage ${stage.name ?? '(runtime)'}`);
  const build = stages[0];
  const runs = instructions(build, 'RUN').map((r) => r.rest);
  t.true(runs.some((r) => /\bnpm ci\b/.test(r)), 'the build stage installs from the lock file');
  t.true(runs.some((r) => /\bnpm run build\b/.test(r)), 'the build stage runs the package\'s build, proto generation included');
  t.regex(pkg.scripts.build, /npm run gen/, 'npm run build generates the protocol code itself');
});

test('every COPY from the build context exists and is not excluded by .dockerignore', (t) => {
  for (const stage of stages) {
    for (const copy of copiesOf(stage).filter((c) => !c.from)) {
      for (const source of copy.sources) {
        t.true(existsSync(join(ROOT, source)), `Dockerfile line ${copy.line}: ${source} does not exist`);
        t.false(ignored(source), `Dockerfile line ${copy.line}: ${source} is excluded by .dockerignore, so the build would not find it`);
      }
    }
  }
});

test('the build stage builds from what it copies, and produces everything the runtime stage copies from it', async (t) => {
  const built = await builtStage();
  for (const [name, path] of Object.entries(pkg.bin)) t.true(existsSync(join(built.dir, path)), `the build stage produces ${path} (bin ${name})`);
  t.true(existsSync(join(built.dir, 'lib', 'wire', 'gen')), 'the protocol code was generated inside the stage');
  const fromBuild = copiesOf(runtime).filter((c) => c.from);
  t.true(fromBuild.length > 0);
  for (const copy of fromBuild) {
    t.is(copy.from, stageNamed(copy.from!)?.name, `Dockerfile line ${copy.line}: --from names a stage of this Dockerfile`);
    for (const source of copy.sources) t.true(existsSync(join(built.dir, posix.relative(built.workdir, source))), `Dockerfile line ${copy.line}: the build stage does not produce ${source}`);
  }
  const maps = readdirSync(join(built.dir, 'dist'), { recursive: true }).filter((f) => String(f).endsWith('.map'));
  t.deepEqual(maps, [], 'no source maps of sources the image does not hold');
});

test('the runtime stage holds what the package ships (dist/lib, dist/bin, proto, package*.json) and nothing of tests or sources', async (t) => {
  const files = await runtimeFiles();
  const workdir = workdirOf(runtime, Infinity);
  const copied = [...files.keys()].map((p) => posix.relative(workdir, p)).sort();
  t.deepEqual(copied, ['dist/bin', 'dist/lib', 'package-lock.json', 'package.json', 'proto'].sort());
  for (const [at, host] of files) t.true(existsSync(host), `${at} comes from ${host}, which exists`);
});

test('every binary of package.json bin is on the image\'s PATH, executable, and runs from the runtime stage\'s files', async (t) => {
  const files = await runtimeFiles();
  const links = symlinksOf(runtime);
  const workdir = workdirOf(runtime, Infinity);
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-runtime-'));
  try {
    for (const [at, host] of files) cpSync(host, join(dir, posix.relative(workdir, at)), { recursive: true });
    symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
    for (const [name, path] of Object.entries(pkg.bin)) {
      const link = [...links.keys()].find((l) => posix.basename(l) === name && IMAGE_PATH.includes(posix.dirname(l)));
      if (!link) {
        t.fail(`${name} is not linked into the image's PATH (${IMAGE_PATH.join(':')}): add ln -s ${posix.join(workdir, path)} /usr/local/bin/${name}`);
        continue;
      }
      t.is(links.get(link), posix.join(workdir, path), `${link} points at the bin entry ${path}`);
      const host = hostPathOf(files, links.get(link)!);
      t.truthy(host, `${links.get(link)} is among the files the runtime stage copies`);
      if (!host) continue;
      t.notThrows(() => accessSync(host, constants.X_OK), `${path} is executable`);
      t.true(readFileSync(host, 'utf8').startsWith('#!/usr/bin/env node\n'), `${path} starts with a node shebang`);
      const { stdout } = await execFileAsync(join(dir, path), ['--version']);
      t.regex(stdout, new RegExp(`${pkg.version}`), `${name} --version runs from the runtime stage's files`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the runtime stage installs production dependencies only (optional ones kept), and runs as 65532 with no shell entrypoint', (t) => {
  const installs = instructions(runtime, 'RUN').filter((r) => /\bnpm (ci|install|i)\b/.test(r.rest));
  t.true(installs.length > 0, 'the runtime stage installs its dependencies');
  for (const install of installs) {
    t.regex(install.rest, /--omit=dev\b/, `Dockerfile line ${install.line} installs dev dependencies`);
    t.notRegex(install.rest, /--omit=optional|--no-optional|--include=dev/, `Dockerfile line ${install.line} drops optional dependencies or adds dev ones`);
  }
  const users = instructions(runtime, 'USER');
  t.is(users.at(-1)?.rest.split(':')[0], RUN_AS, 'the runtime stage runs as 65532');
  const lastRun = Math.max(...instructions(runtime, 'RUN').map((r) => r.line));
  t.true(users.at(-1)!.line > lastRun, 'USER comes after the last RUN, so nothing after it runs as root');
  const entrypoint = instructions(runtime, 'ENTRYPOINT').at(-1);
  t.truthy(entrypoint, 'the runtime stage sets its ENTRYPOINT (the base image\'s is a shell script)');
  const parsed = JSON.parse(entrypoint!.rest) as string[];
  t.true(Array.isArray(parsed), 'ENTRYPOINT is in exec form');
  t.false(parsed.some((w) => /(^|\/)(sh|bash|docker-entrypoint\.sh)$/.test(w)), 'no shell in the ENTRYPOINT');
  const cmd = JSON.parse(instructions(runtime, 'CMD').at(-1)?.rest ?? 'null') as string[] | null;
  t.true(Array.isArray(cmd) && cmd[0] in pkg.bin, 'CMD is a binary of package.json bin, in exec form');
});

test('the manifests\' commands are binaries of package.json bin that the image links', (t) => {
  const links = new Set([...symlinksOf(runtime).keys()].map((l) => posix.basename(l)));
  const commands = new Set<string>();
  const files = readdirSync(join(ROOT, 'k8s'), { recursive: true }).map(String).filter((f) => /\.ya?ml$/.test(f));
  for (const file of files) {
    for (const doc of loadAllYaml(readFileSync(join(ROOT, 'k8s', file), 'utf8')) as Array<V1Deployment | null>) {
      for (const c of doc?.spec?.template?.spec?.containers ?? []) if (c.image?.startsWith('tkestack/tke-anp-tunnel:') && c.command) commands.add(c.command[0]);
    }
  }
  t.deepEqual([...commands].sort(), ['tunnel-agent', 'tunnel-server'], 'the manifests run the server and the agent');
  for (const command of commands) {
    t.true(command in pkg.bin, `${command} is in package.json bin`);
    t.true(links.has(command), `${command} is on the image's PATH`);
  }
});

test('.dockerignore keeps node_modules, dist, generated code and the git directory out of the build context', (t) => {
  for (const path of ['node_modules', 'node_modules/ava/package.json', 'dist', 'dist/bin/tunnel-server.js', 'lib/wire/gen', '.git']) t.true(ignored(path), `${path} is excluded`);
  for (const path of ['package.json', 'package-lock.json', 'lib/wire/codec.ts', 'bin/tunnel-server.ts', 'proto', 'scripts/gen-proto.mjs']) t.false(ignored(path), `${path} is kept`);
  const rules = dockerignore('dist\n!dist/keep\n**/*.log\n');
  t.true(rules('dist/x'));
  t.false(rules('dist/keep'), 'a later ! pattern re-includes');
  t.true(rules('a/b/c.log'), '** matches any depth');
});
