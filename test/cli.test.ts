/** Command-line parsing shared by the binaries. */
import test from 'ava';
import { parseDuration, parseFlags, parseOptionalPort } from '../lib/cli/flags.js';
import { UsageError } from '../lib/common/errors.js';

const INFO = { name: 'tunnel-test', summary: 'test' };
const SPECS = {
  'single-stream': { type: 'boolean', help: 'off by default' },
  'reclaim-memory': { type: 'boolean', default: true, help: 'on by default' },
  'dial-timeout': { type: 'string', default: '5s', help: 'a duration' },
} as const;

test('boolean flags take a bare form and Go\'s --flag=true|false', (t) => {
  t.like(parseFlags(INFO, SPECS, []), { 'single-stream': false, 'reclaim-memory': true });
  t.like(parseFlags(INFO, SPECS, ['--single-stream', '--reclaim-memory=false']), { 'single-stream': true, 'reclaim-memory': false });
  t.like(parseFlags(INFO, SPECS, ['--single-stream=true', '--reclaim-memory=0']), { 'single-stream': true, 'reclaim-memory': false });
  t.like(parseFlags(INFO, SPECS, ['--reclaim-memory=false', '--reclaim-memory=true']), { 'reclaim-memory': true }, 'the last one wins');
  t.throws(() => parseFlags(INFO, SPECS, ['--single-stream=maybe']), { instanceOf: UsageError, message: /--single-stream=maybe is not true or false/ });
});

test('unknown flags and positionals are usage errors that point at --help', (t) => {
  t.throws(() => parseFlags(INFO, SPECS, ['--no-such-flag']), { instanceOf: UsageError, message: /--help/ });
  t.throws(() => parseFlags(INFO, SPECS, ['stray']), { instanceOf: UsageError });
});

test('durations and optional ports', (t) => {
  t.is(parseDuration('d', '500ms'), 500);
  t.is(parseDuration('d', '2m'), 120_000);
  t.is(parseDuration('d', '3'), 3_000);
  t.throws(() => parseDuration('d', 'soon'), { instanceOf: UsageError, message: /--d=soon is not a duration/ });
  t.is(parseOptionalPort('p', 'off'), undefined);
  t.is(parseOptionalPort('p', '0'), 0);
  t.throws(() => parseOptionalPort('p', '70000'), { instanceOf: UsageError });
});
