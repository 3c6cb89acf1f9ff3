/**
 * Hostile peers (harness/fuzz-system.ts) against a real tunnel-server while a legitimate
 * transfer runs through it, with the short budget of `npm test`.
 */
import test from 'ava';
import { KEEPALIVE_CLEANUP_MS, hostilePeerProperty, startHostileSystem, type HostileSystem } from '../harness/fuzz-system.js';
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

// Within the keepalive bound: a dropped agent connection is at times noticed only by the
// server's keepalive (bench/fuzz.ts holds the server to PROMPT_CLEANUP_MS).
const property = hostilePeerProperty(() => system!, 12, KEEPALIVE_CLEANUP_MS);
test(property.name, async (t) => {
  const result = await property.check({ numRuns: property.runs });
  t.false(result.failed, `${result.report}\n\nserver output:\n${system!.server.output.slice(-3000)}`);
});
