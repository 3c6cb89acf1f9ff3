import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DEMO, run } from './helpers/system.js';

const execFileAsync = promisify(execFile);

test('npm start: the demo tunnels a request, prints a curl command that works, and stops on SIGTERM', async (t) => {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-demo-'));
  const demo = run(DEMO, [`--state-dir=${dir}`, '--agent-port=0', '--server-port=0', '--target-port=0']);
  try {
    await demo.waitFor(/Press Ctrl-C to stop\./, 30_000);
    t.regex(demo.output, /HTML Response:\n<!DOCTYPE html>.*The success test page!/);
    t.notRegex(demo.output, /DeprecationWarning/);
    const command = demo.output.match(/^ {2}(curl -p .*)$/m)?.[1];
    t.truthy(command, 'a curl command is printed');
    const [curl, ...args] = command!.split(' ');
    const { stdout } = await execFileAsync(curl, ['--silent', '--show-error', '--max-time', '10', ...args]);
    t.regex(stdout, /The success test page!.*Served inside cluster "demo"/s);
    t.regex(demo.output, /GET http:\/\/127\.0\.0\.1:\d+\/hello from inside the cluster:\nHello from the hub: GET \/hello came from cluster "demo" via 1\.1 tunnel-server/);
    const push = demo.output.match(/^ {2}(curl http:\/\/127.*)$/m)?.[1];
    t.truthy(push, 'a curl command for push is printed');
    const pushed = await execFileAsync('curl', ['--silent', '--show-error', '--max-time', '10', push!.split(' ')[1]]);
    t.regex(pushed.stdout, /Hello from the hub: GET \/hello came from cluster "demo"/);
  } finally {
    t.is(await demo.stop('SIGTERM'), 0);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('npm start -- --kube: certificates come from the hub\'s CSR API, and curl goes through the tunnel with them', async (t) => {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-demo-kube-'));
  const demo = run(DEMO, ['--kube', `--state-dir=${dir}`, '--agent-port=0', '--server-port=0', '--target-port=0']);
  try {
    await demo.waitFor(/Press Ctrl-C to stop\./, 30_000);
    t.regex(demo.output, /certificate issued role=tunnel-server csr=tunnel-server-\w+/);
    t.regex(demo.output, /certificate issued role="tunnel-agent of cluster demo"/);
    t.regex(demo.output, /HTML Response:\n<!DOCTYPE html>.*The success test page!/);
    const command = demo.output.match(/^ {2}(curl -p .*)$/m)?.[1];
    const [curl, ...args] = command!.split(' ');
    const { stdout } = await execFileAsync(curl, ['--silent', '--show-error', '--max-time', '10', ...args]);
    t.regex(stdout, /Served inside cluster "demo"/);
  } finally {
    t.is(await demo.stop('SIGTERM'), 0);
    rmSync(dir, { recursive: true, force: true });
  }
});
