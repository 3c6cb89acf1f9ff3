/**
 * Validation errors as apimachinery's field.Error: a type, a field path, the bad value and a
 * detail. Messages are built the way Go builds them (field.Error.ErrorBody), because clients and
 * people match on that text: strings print %q-quoted, integers plainly, a uint64 such as a
 * resourceVersion as %#v (0x0), and a []byte as Go's %#v of a byte slice.
 */

export type FieldErrorType =
  | 'FieldValueNotFound'
  | 'FieldValueRequired'
  | 'FieldValueDuplicate'
  | 'FieldValueInvalid'
  | 'FieldValueNotSupported'
  | 'FieldValueForbidden'
  | 'FieldValueTooLong';

/** How each type reads in a message (field.ErrorType.String()). */
const TYPE_TEXT: Record<FieldErrorType, string> = {
  FieldValueNotFound: 'Not found',
  FieldValueRequired: 'Required value',
  FieldValueDuplicate: 'Duplicate value',
  FieldValueInvalid: 'Invalid value',
  FieldValueNotSupported: 'Unsupported value',
  FieldValueForbidden: 'Forbidden',
  FieldValueTooLong: 'Too long',
};

/** Types whose message never shows the value (ErrorBody prints only the type for these). */
const VALUELESS: ReadonlySet<FieldErrorType> = new Set(['FieldValueRequired', 'FieldValueForbidden', 'FieldValueTooLong']);

/** A value printed as Go's %#v of a uint64, e.g. a resourceVersion of 0 as 0x0. */
export class GoUint {
  constructor(readonly value: number) {}
  toString(): string {
    return `0x${this.value.toString(16)}`;
  }
}

/** A value printed as Go's %#v of a []byte: []byte{0x2d, 0x2d} (nil as []byte(nil)). */
export class GoBytes {
  constructor(readonly bytes: Buffer | null) {}
  toString(): string {
    if (this.bytes === null) return '[]byte(nil)';
    return `[]byte{${[...this.bytes].map((b) => `0x${b.toString(16)}`).join(', ')}}`;
  }
}

export type BadValue = string | number | boolean | GoUint | GoBytes | null | undefined;

export interface FieldError {
  type: FieldErrorType;
  field: string;
  badValue?: BadValue;
  detail: string;
}

export function required(field: string, detail = ''): FieldError {
  return { type: 'FieldValueRequired', field, detail };
}

export function invalid(field: string, badValue: BadValue, detail: string): FieldError {
  return { type: 'FieldValueInvalid', field, badValue, detail };
}

export function notSupported(field: string, badValue: BadValue, supported: string[]): FieldError {
  const detail = supported.length > 0 ? `supported values: ${supported.map(goQuote).join(', ')}` : '';
  return { type: 'FieldValueNotSupported', field, badValue, detail };
}

export function duplicate(field: string, badValue: BadValue): FieldError {
  return { type: 'FieldValueDuplicate', field, badValue, detail: '' };
}

export function forbidden(field: string, detail: string): FieldError {
  return { type: 'FieldValueForbidden', field, detail };
}

/** field.TooLong: the message names the limit in bytes. */
export function tooLong(field: string, maxLength: number): FieldError {
  return { type: 'FieldValueTooLong', field, detail: `may not be more than ${maxLength} ${maxLength === 1 ? 'byte' : 'bytes'}` };
}

/** The message of one error without its field (ErrorBody). */
export function errorBody(error: FieldError): string {
  let text = TYPE_TEXT[error.type];
  if (!VALUELESS.has(error.type)) text += `: ${formatValue(error.badValue)}`;
  if (error.detail.length > 0) text += `: ${error.detail}`;
  return text;
}

/** "field: body", as field.Error.Error(). */
export function errorText(error: FieldError): string {
  return `${error.field}: ${errorBody(error)}`;
}

/** A list of errors as utilerrors.Aggregate prints it: one alone, several in brackets. */
export function aggregateText(errors: FieldError[]): string {
  const texts = [...new Set(errors.map(errorText))];
  return texts.length === 1 ? texts[0] : `[${texts.join(', ')}]`;
}

/** Go's %q of a string (close enough: JSON's escaping of the same characters). */
export function goQuote(text: string): string {
  return JSON.stringify(text);
}

/** Go's %q of a []string: ["a" "b"]. */
export function goQuoteList(items: string[]): string {
  return `[${items.map(goQuote).join(' ')}]`;
}

function formatValue(value: BadValue): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'string') return goQuote(value);
  return String(value);
}

/** Field path helpers: spec.usages[2], data[key]. */
export function index(path: string, i: number): string {
  return `${path}[${i}]`;
}

export function key(path: string, k: string): string {
  return `${path}[${k}]`;
}
