#!/usr/bin/env node
// tsc does not keep the executable bit: mark the compiled entry points so that the
// package.json "bin" commands (npx tunnel-server, ...) run directly.
import { chmodSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const bin = fileURLToPath(new URL('../dist/bin/', import.meta.url));
for (const name of readdirSync(bin)) {
  if (name.endsWith('.js')) chmodSync(join(bin, name), 0o755);
}
