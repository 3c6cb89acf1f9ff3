/**
 * Errors every layer may raise and every binary knows how to report.
 */

/**
 * A bad command line or configuration: the binary prints the message (which says what to
 * give instead) and exits with status 2, without a stack trace.
 */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}
