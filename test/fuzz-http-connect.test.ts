/**
 * Property-based tests of the HTTP-CONNECT frontend's request parsing (harness/fuzz-properties.ts),
 * with the short budget of `npm test`.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { httpConnectProperties } from '../harness/fuzz-properties.js';

const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-fuzz-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

for (const p of httpConnectProperties(dir)) {
  test(p.name, async (t) => {
    const result = await p.check({ numRuns: p.runs });
    t.false(result.failed, result.report);
  });
}
