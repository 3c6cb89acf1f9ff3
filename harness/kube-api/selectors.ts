/**
 * Label and field selectors as the API server parses and applies them (apimachinery labels.Parse
 * and fields.ParseSelector). A parse error is the client's fault: the caller answers 400.
 */
import { isQualifiedName, isValidLabelValue } from './name-validation.js';

type LabelOperator = 'exists' | 'notexists' | 'eq' | 'neq' | 'in' | 'notin' | 'gt' | 'lt';

interface LabelRequirement {
  key: string;
  operator: LabelOperator;
  values: string[];
}

/** A parsed labelSelector; the empty selector matches everything. */
export class LabelSelector {
  private constructor(private readonly requirements: LabelRequirement[]) {}

  static readonly everything = new LabelSelector([]);

  /** Throws an Error with the parser's message for a malformed selector. */
  static parse(text: string): LabelSelector {
    if (text.trim() === '') return LabelSelector.everything;
    return new LabelSelector(splitTopLevel(text).map(parseLabelRequirement));
  }

  matches(labels: Record<string, string>): boolean {
    return this.requirements.every((r) => requirementMatches(r, labels));
  }
}

function requirementMatches(r: LabelRequirement, labels: Record<string, string>): boolean {
  const has = Object.hasOwn(labels, r.key);
  const value = labels[r.key];
  switch (r.operator) {
    case 'exists':
      return has;
    case 'notexists':
      return !has;
    case 'eq':
    case 'in':
      return has && r.values.includes(value);
    case 'neq':
    case 'notin':
      return !has || !r.values.includes(value);
    case 'gt':
    case 'lt': {
      if (!has || !/^-?\d+$/.test(value)) return false;
      const n = Number(value);
      const bound = Number(r.values[0]);
      return r.operator === 'gt' ? n > bound : n < bound;
    }
  }
}

/** Splits on commas that are not inside a parenthesized value set. */
function splitTopLevel(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let current = '';
  for (const ch of text) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      parts.push(current);
      current = '';
    } else {
      current += ch;
    }
  }
  parts.push(current);
  return parts;
}

const SET_FORM = /^\s*([^\s!=<>()]+)\s+(in|notin)\s*\(([^()]*)\)\s*$/;
const EXISTS_FORM = /^\s*(!?)\s*([^\s!=<>(),]+)\s*$/;
const BINARY_FORM = /^\s*([^\s!=<>(),]+)\s*(==|=|!=|>|<)\s*([^\s!=<>(),]*)\s*$/;

function parseLabelRequirement(term: string): LabelRequirement {
  let requirement: LabelRequirement;
  const set = SET_FORM.exec(term);
  const exists = EXISTS_FORM.exec(term);
  const binary = BINARY_FORM.exec(term);
  if (set) {
    const values = set[3].split(',').map((v) => v.trim());
    requirement = { key: set[1], operator: set[2] === 'in' ? 'in' : 'notin', values: values.length === 1 && values[0] === '' ? [] : values };
    if (requirement.values.length === 0) throw new Error(`unable to parse requirement: for 'in', 'notin' operators, values set can't be empty`);
  } else if (exists) {
    requirement = { key: exists[2], operator: exists[1] === '!' ? 'notexists' : 'exists', values: [] };
  } else if (binary) {
    const op = binary[2];
    const operator: LabelOperator = op === '!=' ? 'neq' : op === '>' ? 'gt' : op === '<' ? 'lt' : 'eq';
    requirement = { key: binary[1], operator, values: [binary[3]] };
    if ((operator === 'gt' || operator === 'lt') && !/^-?\d+$/.test(binary[3])) {
      throw new Error(`unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer`);
    }
  } else {
    throw new Error(`unable to parse requirement: found '${term.trim()}', expected: identifier`);
  }
  const keyErrors = isQualifiedName(requirement.key);
  if (keyErrors.length > 0) throw new Error(`unable to parse requirement: key: Invalid value: "${requirement.key}": ${keyErrors.join('; ')}`);
  if (requirement.operator !== 'gt' && requirement.operator !== 'lt') {
    for (const [i, value] of requirement.values.entries()) {
      const valueErrors = isValidLabelValue(value);
      if (valueErrors.length > 0) throw new Error(`unable to parse requirement: values[${i}][${requirement.key}]: Invalid value: "${value}": ${valueErrors.join('; ')}`);
    }
  }
  return requirement;
}

export interface FieldRequirement {
  field: string;
  operator: 'eq' | 'neq';
  value: string;
}

/** A parsed fieldSelector: terms ANDed together. */
export class FieldSelector {
  private constructor(readonly requirements: FieldRequirement[]) {}

  static readonly everything = new FieldSelector([]);

  /** Throws an Error with fields.ParseSelector's message for a malformed selector. */
  static parse(text: string): FieldSelector {
    if (text.trim() === '') return FieldSelector.everything;
    const requirements: FieldRequirement[] = [];
    for (const part of splitUnescaped(text, ',')) {
      if (part === '') continue;
      const parsed = parseFieldTerm(part);
      if (!parsed) throw new Error(`invalid selector: '${text}'; can't understand '${part}'`);
      requirements.push(parsed);
    }
    return new FieldSelector(requirements);
  }

  /** The value an `=` term demands of a field, if there is exactly such a term. */
  requiresExactMatch(field: string): string | undefined {
    return this.requirements.find((r) => r.field === field && r.operator === 'eq')?.value;
  }

  matches(fields: Record<string, string>): boolean {
    return this.requirements.every((r) => ((fields[r.field] ?? '') === r.value) === (r.operator === 'eq'));
  }
}

function parseFieldTerm(term: string): FieldRequirement | undefined {
  for (const [op, operator] of [['!=', 'neq'], ['==', 'eq'], ['=', 'eq']] as const) {
    const at = indexUnescaped(term, op);
    if (at >= 0) return { field: unescape(term.slice(0, at)), operator, value: unescape(term.slice(at + op.length)) };
  }
  return undefined;
}

function splitUnescaped(text: string, separator: string): string[] {
  const parts: string[] = [];
  let current = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '\\' && i + 1 < text.length) {
      current += text[i] + text[i + 1];
      i++;
    } else if (text[i] === separator) {
      parts.push(current);
      current = '';
    } else {
      current += text[i];
    }
  }
  parts.push(current);
  return parts;
}

function indexUnescaped(text: string, needle: string): number {
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '\\') {
      i++;
      continue;
    }
    if (text.startsWith(needle, i)) return i;
  }
  return -1;
}

function unescape(text: string): string {
  return text.replace(/\\(.)/g, '$1');
}
