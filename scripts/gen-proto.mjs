#!/usr/bin/env node
// Regenerates lib/wire/gen/ from proto/ with buf (from the npm registry) and protoc-gen-ts.
// Runs offline; `npm run build` (and so `npm ci`, through `prepare`) calls it.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'lib/wire/gen');
rmSync(out, { recursive: true, force: true });
execFileSync(join(root, 'node_modules/.bin/buf'), ['generate'], { cwd: root, stdio: 'inherit' });

// protoc-gen-ts writes extensionless relative imports; Node's ESM resolver needs ".js".
for (const name of readdirSync(out)) {
  const file = join(out, name);
  const text = readFileSync(file, 'utf8').replace(/from "(\.\/[^"]+)"/g, 'from "$1.js"');
  writeFileSync(file, `// @ts-nocheck\n${text}`);
}
