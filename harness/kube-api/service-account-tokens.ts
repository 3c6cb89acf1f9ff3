/**
 * ServiceAccount tokens as kube-apiserver issues them through TokenRequest: ES256 JWTs with the
 * issuer, audiences, lifetime and the kubernetes.io claims naming the ServiceAccount (and the
 * Pod, Secret or Node the token is bound to). Validation checks what the real validator checks,
 * with its messages: the signature, expiry (with go-jose's one-minute leeway), the audiences
 * asked for, and that the ServiceAccount and bound object still exist with the same uid.
 */
import { createPublicKey, generateKeyPairSync, randomUUID, sign, verify, type KeyObject } from 'node:crypto';
import { isObject, metaString, type JsonObject } from './json.js';
import { goQuoteList } from './field-errors.js';
import { serviceAccountUser, type UserInfo } from './user.js';

/** kubeadm's --service-account-issuer; --api-audiences defaults to it. */
export const SERVICE_ACCOUNT_ISSUER = 'https://kubernetes.default.svc.cluster.local';
export const API_AUDIENCES: readonly string[] = [SERVICE_ACCOUNT_ISSUER];
/** go-jose's jwt.DefaultLeeway, which the validator's Validate applies to exp and nbf. */
const LEEWAY_SECONDS = 60;
const EXTRA_CREDENTIAL_ID = 'authentication.kubernetes.io/credential-id';
const EXTRA_PREFIX = 'authentication.kubernetes.io/';
/** go-jose's error for a signature that does not verify. */
const BAD_SIGNATURE = 'go-jose/go-jose: error in cryptographic primitive';
const BOUND_RESOURCES = { pod: 'pods', secret: 'secrets', node: 'nodes' } as const;

/** The objects a token can be bound to, by kind, and the resource they are looked up in. */
export const BINDABLE_KINDS: Readonly<Record<string, 'pods' | 'secrets' | 'nodes'>> = { Pod: 'pods', Secret: 'secrets', Node: 'nodes' };

export type ObjectLookup = (resource: 'serviceaccounts' | 'pods' | 'secrets' | 'nodes', namespace: string, name: string) => JsonObject | undefined;

export interface BoundObject {
  kind: string;
  name: string;
  uid: string;
}

interface Claims {
  aud: string[];
  exp: number;
  iat: number;
  nbf: number;
  iss: string;
  jti: string;
  sub: string;
  'kubernetes.io': {
    namespace: string;
    serviceaccount: { name: string; uid: string };
    pod?: { name: string; uid: string };
    secret?: { name: string; uid: string };
    node?: { name: string; uid: string };
  };
}

export type TokenResult =
  | { kind: 'authenticated'; user: UserInfo; audiences: string[] }
  | { kind: 'rejected'; error: string }
  | { kind: 'unknown' };

export class ServiceAccountTokens {
  private readonly privateKey: KeyObject;
  private readonly publicKey: KeyObject;
  private readonly keyId = randomUUID();

  constructor(private readonly lookup: ObjectLookup) {
    const pair = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    this.privateKey = pair.privateKey;
    this.publicKey = createPublicKey(pair.privateKey);
  }

  issue(serviceAccount: JsonObject, audiences: string[], expirationSeconds: number, bound: BoundObject | undefined, now: Date): { token: string; expires: Date } {
    const iat = Math.floor(now.getTime() / 1000);
    const namespace = metaString(serviceAccount, 'namespace');
    const name = metaString(serviceAccount, 'name');
    const claims: Claims = {
      aud: audiences, exp: iat + expirationSeconds, iat, nbf: iat, iss: SERVICE_ACCOUNT_ISSUER, jti: randomUUID(),
      sub: `system:serviceaccount:${namespace}:${name}`,
      'kubernetes.io': { namespace, serviceaccount: { name, uid: metaString(serviceAccount, 'uid') } },
    };
    if (bound) claims['kubernetes.io'][bound.kind.toLowerCase() as 'pod' | 'secret' | 'node'] = { name: bound.name, uid: bound.uid };
    const header = base64url(JSON.stringify({ alg: 'ES256', kid: this.keyId }));
    const payload = base64url(JSON.stringify(claims));
    const signature = sign('sha256', Buffer.from(`${header}.${payload}`), { key: this.privateKey, dsaEncoding: 'ieee-p1363' });
    return { token: `${header}.${payload}.${signature.toString('base64url')}`, expires: new Date(claims.exp * 1000) };
  }

  /** Checks a bearer token against the audiences asked for (the API audiences when none), in the real authenticator's order. */
  authenticate(token: string, requestedAudiences: readonly string[], now: Date): TokenResult {
    const parsed = this.parse(token);
    if (parsed.kind !== 'signed') return parsed.kind === 'bad-signature' ? { kind: 'rejected', error: BAD_SIGNATURE } : { kind: 'unknown' };
    const { claims } = parsed;
    const audiences = claims.aud.filter((a) => requestedAudiences.includes(a));
    if (audiences.length === 0) {
      return { kind: 'rejected', error: `token audiences ${goQuoteList(claims.aud)} is invalid for the target audiences ${goQuoteList([...requestedAudiences])}` };
    }
    const seconds = now.getTime() / 1000;
    if (seconds > claims.exp + LEEWAY_SECONDS) return { kind: 'rejected', error: 'service account token has expired' };
    if (seconds < claims.nbf - LEEWAY_SECONDS) return { kind: 'rejected', error: 'service account token is not valid yet' };
    const k8s = claims['kubernetes.io'];
    const namespace = k8s.namespace;
    const sa = this.lookup('serviceaccounts', namespace, k8s.serviceaccount.name);
    if (!sa) return { kind: 'rejected', error: `serviceaccounts "${k8s.serviceaccount.name}" not found` };
    if (metaString(sa, 'uid') !== k8s.serviceaccount.uid) {
      return { kind: 'rejected', error: `service account UID (${metaString(sa, 'uid')}) does not match claim (${k8s.serviceaccount.uid})` };
    }
    if (metaString(sa, 'deletionTimestamp') !== '') return { kind: 'rejected', error: `service account ${namespace}/${k8s.serviceaccount.name} has been deleted` };
    const extra: Record<string, string[]> = { [EXTRA_CREDENTIAL_ID]: [`JTI=${claims.jti}`] };
    for (const kind of ['pod', 'secret', 'node'] as const) {
      const ref = k8s[kind];
      if (!ref) continue;
      const bound = this.lookup(BOUND_RESOURCES[kind], kind === 'node' ? '' : namespace, ref.name);
      if (!bound || metaString(bound, 'deletionTimestamp') !== '') return { kind: 'rejected', error: 'service account token has been invalidated' };
      if (metaString(bound, 'uid') !== ref.uid) {
        return { kind: 'rejected', error: `${kind} UID (${metaString(bound, 'uid')}) does not match service account ${kind} ref claim (${ref.uid})` };
      }
      if (kind !== 'secret') {
        extra[`${EXTRA_PREFIX}${kind}-name`] = [ref.name];
        extra[`${EXTRA_PREFIX}${kind}-uid`] = [ref.uid];
      }
    }
    return { kind: 'authenticated', user: serviceAccountUser(namespace, k8s.serviceaccount.name, k8s.serviceaccount.uid, extra), audiences };
  }

  /**
   * A token of this issuer with a good signature gives its claims; one of this issuer with a
   * bad signature is refused (as go-jose refuses it); anything else is not a token of ours.
   */
  private parse(token: string): { kind: 'signed'; claims: Claims } | { kind: 'bad-signature' } | { kind: 'foreign' } {
    const parts = token.split('.');
    if (parts.length !== 3) return { kind: 'foreign' };
    let claims: unknown;
    try {
      claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8')) as unknown;
    } catch {
      return { kind: 'foreign' };
    }
    if (!isObject(claims) || claims.iss !== SERVICE_ACCOUNT_ISSUER) return { kind: 'foreign' };
    const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
    const ok = verify('sha256', signed, { key: this.publicKey, dsaEncoding: 'ieee-p1363' }, Buffer.from(parts[2], 'base64url'));
    return ok ? { kind: 'signed', claims: claims as unknown as Claims } : { kind: 'bad-signature' };
  }
}

function base64url(text: string): string {
  return Buffer.from(text).toString('base64url');
}
