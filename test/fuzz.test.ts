/**
 * Property-based tests of what reads peers' bytes, with the short budget of `npm test`:
 * see harness/fuzz-properties.ts for the properties, and bench/fuzz.ts for long runs.
 */
import test from 'ava';
import { METADATA_PROPERTIES, MUX_PROPERTIES, WIRE_PROPERTIES } from '../harness/fuzz-properties.js';

for (const p of [...WIRE_PROPERTIES, ...METADATA_PROPERTIES, ...MUX_PROPERTIES]) {
  test(p.name, async (t) => {
    const result = await p.check({ numRuns: p.runs });
    t.false(result.failed, result.report);
  });
}
