/**
 * Hostile peers (harness/fuzz-system.ts) against a real tunnel-server while a legitimate
 * transfer runs through it, with the short budget of `npm test`.
 */
import test from 'ava';
import { hostilePeerProperty, startHostileSystem, type HostileSystem } from '../harness/fuzz-system.js';
import { setLogLevel } from '../lib/observe/log.js';

// The in-process PKI setup need not narrate; the binaries keep their own log level.
setLogLevel('warn');

let system: HostileSystem | undefined;
test.before(async () => {
  system = await startHostileSystem();
});
test.after.always(async () => {
  await system?.stop();
});

const property = hostilePeerProperty(() => system!, 12);
test(property.name, async (t) => {
  const result = await property.check({ numRuns: property.runs });
  t.false(result.failed, `${result.report}\n\nserver output:\n${system!.server.output.slice(-3000)}`);
});
