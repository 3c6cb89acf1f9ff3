/**
 * Lost or changed bytes: a connection whose bytes did not arrive whole. Every failure is
 * kept for the whole run, even where a scenario goes on after it, so that the run as a
 * whole is void: a figure from a run that lost a byte is not a result.
 */
const failures: string[] = [];

export class IntegrityError extends Error {
  override readonly name = 'IntegrityError';
}

/** Records the failure and returns the error to throw. */
export function integrityFailure(detail: string): IntegrityError {
  failures.push(detail);
  return new IntegrityError(`DATA INTEGRITY: ${detail}`);
}

export function integrityFailures(): readonly string[] {
  return failures;
}

/** Rethrows integrity failures; other errors are the caller's to handle. */
export function rethrowIntegrity(err: unknown): void {
  if (err instanceof IntegrityError) throw err;
}
