/**
 * The label and field selectors of a list or watch, checked against what the resource type can
 * select on (an unknown field label is a 400, worded as that type's conversion function words
 * it), and applied to objects.
 */
import { metaStringMap, type JsonObject } from './json.js';
import { FieldSelector, LabelSelector } from './selectors.js';
import { badRequest } from './status.js';
import type { ResourceType } from './resource-types.js';

export class Selection {
  private constructor(
    private readonly type: ResourceType,
    readonly labels: LabelSelector,
    readonly fields: FieldSelector,
    /** Set when the selection narrows a namespace (the path's namespace). */
    readonly namespace: string | undefined,
  ) {}

  static parse(type: ResourceType, params: URLSearchParams, namespace: string | undefined): Selection {
    let labels: LabelSelector;
    let fields: FieldSelector;
    try {
      labels = LabelSelector.parse(params.get('labelSelector') ?? '');
      fields = FieldSelector.parse(params.get('fieldSelector') ?? '');
    } catch (err) {
      throw badRequest((err as Error).message);
    }
    for (const { field } of fields.requirements) {
      if (type.fieldLabels.supported.includes(field)) continue;
      if (type.fieldLabels.style === 'explicit') throw badRequest(`field label not supported: ${field}`);
      throw badRequest(`"${field}" is not a known field selector: only "metadata.name", "metadata.namespace"`);
    }
    return new Selection(type, labels, fields, namespace);
  }

  /** Whether the selection narrows nothing (then lists report remainingItemCount). */
  get isEverything(): boolean {
    return this.labels === LabelSelector.everything && this.fields === FieldSelector.everything;
  }

  matches(object: JsonObject): boolean {
    if (this.namespace !== undefined && this.type.namespaced) {
      const metadata = object.metadata as JsonObject | undefined;
      if ((metadata?.namespace ?? '') !== this.namespace) return false;
    }
    return this.labels.matches(metaStringMap(object, 'labels')) && this.fields.matches(this.type.fields(object));
  }
}
