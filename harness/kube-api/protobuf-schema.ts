/**
 * Field numbers of the Kubernetes protobuf messages the double decodes, as k8s.io/api's and
 * k8s.io/apimachinery's generated.proto define them. kubectl sends protobuf bodies for the
 * built-in types it creates or updates with typed clients (create configmap/secret/namespace/
 * serviceaccount/service/token, certificate approve); these are the messages those reach.
 * Each field is [JSON name, type, 'repeated'?], or [JSON name, 'map', value type]. Types are
 * scalars, another message of this table, or the ones protobuf.ts decodes itself (meta.Time,
 * meta.MicroTime, intstr.IntOrString); 'skip' fields (managedFields) are dropped.
 */

export type FieldSpec = readonly [string, string] | readonly [string, string, 'repeated'] | readonly [string, 'map', string];

export const MESSAGES: Readonly<Record<string, Readonly<Record<number, FieldSpec>>>> = {
  'authentication.AttestationValue': { 1: ['items', 'string', 'repeated'] },
  'authentication.BoundObjectReference': { 1: ['kind', 'string'], 2: ['apiVersion', 'string'], 3: ['name', 'string'], 4: ['uid', 'string'] },
  'authentication.ExtraValue': { 1: ['items', 'string', 'repeated'] },
  'authentication.TokenRequest': { 1: ['metadata', 'meta.ObjectMeta'], 2: ['spec', 'authentication.TokenRequestSpec'], 3: ['status', 'authentication.TokenRequestStatus'] },
  'authentication.TokenRequestSpec': { 1: ['audiences', 'string', 'repeated'], 3: ['boundObjectRef', 'authentication.BoundObjectReference'], 4: ['expirationSeconds', 'int64'], 5: ['attestations', 'map', 'authentication.AttestationValue'] },
  'authentication.TokenRequestStatus': { 1: ['token', 'string'], 2: ['expirationTimestamp', 'meta.Time'] },
  'authentication.TokenReview': { 1: ['metadata', 'meta.ObjectMeta'], 2: ['spec', 'authentication.TokenReviewSpec'], 3: ['status', 'authentication.TokenReviewStatus'] },
  'authentication.TokenReviewSpec': { 1: ['token', 'string'], 2: ['audiences', 'string', 'repeated'] },
  'authentication.TokenReviewStatus': { 1: ['authenticated', 'bool'], 2: ['user', 'authentication.UserInfo'], 3: ['error', 'string'], 4: ['audiences', 'string', 'repeated'] },
  'authentication.UserInfo': { 1: ['username', 'string'], 2: ['uid', 'string'], 3: ['groups', 'string', 'repeated'], 4: ['extra', 'map', 'authentication.ExtraValue'] },
  'certificates.CertificateSigningRequest': { 1: ['metadata', 'meta.ObjectMeta'], 2: ['spec', 'certificates.CertificateSigningRequestSpec'], 3: ['status', 'certificates.CertificateSigningRequestStatus'] },
  'certificates.CertificateSigningRequestCondition': { 1: ['type', 'string'], 2: ['reason', 'string'], 3: ['message', 'string'], 4: ['lastUpdateTime', 'meta.Time'], 5: ['lastTransitionTime', 'meta.Time'], 6: ['status', 'string'] },
  'certificates.CertificateSigningRequestSpec': { 1: ['request', 'bytes'], 2: ['username', 'string'], 3: ['uid', 'string'], 4: ['groups', 'string', 'repeated'], 5: ['usages', 'string', 'repeated'], 6: ['extra', 'map', 'certificates.ExtraValue'], 7: ['signerName', 'string'], 8: ['expirationSeconds', 'int32'] },
  'certificates.CertificateSigningRequestStatus': { 1: ['conditions', 'certificates.CertificateSigningRequestCondition', 'repeated'], 2: ['certificate', 'bytes'] },
  'certificates.ExtraValue': { 1: ['items', 'string', 'repeated'] },
  'coordination.Lease': { 1: ['metadata', 'meta.ObjectMeta'], 2: ['spec', 'coordination.LeaseSpec'] },
  'coordination.LeaseSpec': { 1: ['holderIdentity', 'string'], 2: ['leaseDurationSeconds', 'int32'], 3: ['acquireTime', 'meta.MicroTime'], 4: ['renewTime', 'meta.MicroTime'], 5: ['leaseTransitions', 'int32'], 6: ['strategy', 'string'], 7: ['preferredHolder', 'string'] },
  'core.ClientIPConfig': { 1: ['timeoutSeconds', 'int32'] },
  'core.ConfigMap': { 1: ['metadata', 'meta.ObjectMeta'], 2: ['data', 'map', 'string'], 3: ['binaryData', 'map', 'bytes'], 4: ['immutable', 'bool'] },
  'core.EndpointAddress': { 1: ['ip', 'string'], 2: ['targetRef', 'core.ObjectReference'], 3: ['hostname', 'string'], 4: ['nodeName', 'string'] },
  'core.EndpointPort': { 1: ['name', 'string'], 2: ['port', 'int32'], 3: ['protocol', 'string'], 4: ['appProtocol', 'string'] },
  'core.EndpointSubset': { 1: ['addresses', 'core.EndpointAddress', 'repeated'], 2: ['notReadyAddresses', 'core.EndpointAddress', 'repeated'], 3: ['ports', 'core.EndpointPort', 'repeated'] },
  'core.Endpoints': { 1: ['metadata', 'meta.ObjectMeta'], 2: ['subsets', 'core.EndpointSubset', 'repeated'] },
  'core.LoadBalancerIngress': { 1: ['ip', 'string'], 2: ['hostname', 'string'], 3: ['ipMode', 'string'], 4: ['ports', 'core.PortStatus', 'repeated'] },
  'core.LoadBalancerStatus': { 1: ['ingress', 'core.LoadBalancerIngress', 'repeated'] },
  'core.LocalObjectReference': { 1: ['name', 'string'] },
  'core.Namespace': { 1: ['metadata', 'meta.ObjectMeta'], 2: ['spec', 'core.NamespaceSpec'], 3: ['status', 'core.NamespaceStatus'] },
  'core.NamespaceCondition': { 1: ['type', 'string'], 2: ['status', 'string'], 4: ['lastTransitionTime', 'meta.Time'], 5: ['reason', 'string'], 6: ['message', 'string'] },
  'core.NamespaceSpec': { 1: ['finalizers', 'string', 'repeated'] },
  'core.NamespaceStatus': { 1: ['phase', 'string'], 2: ['conditions', 'core.NamespaceCondition', 'repeated'] },
  'core.ObjectReference': { 1: ['kind', 'string'], 2: ['namespace', 'string'], 3: ['name', 'string'], 4: ['uid', 'string'], 5: ['apiVersion', 'string'], 6: ['resourceVersion', 'string'], 7: ['fieldPath', 'string'] },
  'core.PortStatus': { 1: ['port', 'int32'], 2: ['protocol', 'string'], 3: ['error', 'string'] },
  'core.Secret': { 1: ['metadata', 'meta.ObjectMeta'], 2: ['data', 'map', 'bytes'], 3: ['type', 'string'], 4: ['stringData', 'map', 'string'], 5: ['immutable', 'bool'] },
  'core.Service': { 1: ['metadata', 'meta.ObjectMeta'], 2: ['spec', 'core.ServiceSpec'], 3: ['status', 'core.ServiceStatus'] },
  'core.ServiceAccount': { 1: ['metadata', 'meta.ObjectMeta'], 2: ['secrets', 'core.ObjectReference', 'repeated'], 3: ['imagePullSecrets', 'core.LocalObjectReference', 'repeated'], 4: ['automountServiceAccountToken', 'bool'] },
  'core.ServicePort': { 1: ['name', 'string'], 2: ['protocol', 'string'], 3: ['port', 'int32'], 4: ['targetPort', 'intstr.IntOrString'], 5: ['nodePort', 'int32'], 6: ['appProtocol', 'string'] },
  'core.ServiceSpec': { 1: ['ports', 'core.ServicePort', 'repeated'], 2: ['selector', 'map', 'string'], 3: ['clusterIP', 'string'], 4: ['type', 'string'], 5: ['externalIPs', 'string', 'repeated'], 7: ['sessionAffinity', 'string'], 8: ['loadBalancerIP', 'string'], 9: ['loadBalancerSourceRanges', 'string', 'repeated'], 10: ['externalName', 'string'], 11: ['externalTrafficPolicy', 'string'], 12: ['healthCheckNodePort', 'int32'], 13: ['publishNotReadyAddresses', 'bool'], 14: ['sessionAffinityConfig', 'core.SessionAffinityConfig'], 17: ['ipFamilyPolicy', 'string'], 18: ['clusterIPs', 'string', 'repeated'], 19: ['ipFamilies', 'string', 'repeated'], 20: ['allocateLoadBalancerNodePorts', 'bool'], 21: ['loadBalancerClass', 'string'], 22: ['internalTrafficPolicy', 'string'], 23: ['trafficDistribution', 'string'] },
  'core.ServiceStatus': { 1: ['loadBalancer', 'core.LoadBalancerStatus'], 2: ['conditions', 'meta.Condition', 'repeated'] },
  'core.SessionAffinityConfig': { 1: ['clientIP', 'core.ClientIPConfig'] },
  'meta.Condition': { 1: ['type', 'string'], 2: ['status', 'string'], 3: ['observedGeneration', 'int64'], 4: ['lastTransitionTime', 'meta.Time'], 5: ['reason', 'string'], 6: ['message', 'string'] },
  'meta.DeleteOptions': { 1: ['gracePeriodSeconds', 'int64'], 2: ['preconditions', 'meta.Preconditions'], 3: ['orphanDependents', 'bool'], 4: ['propagationPolicy', 'string'], 5: ['dryRun', 'string', 'repeated'], 6: ['ignoreStoreReadErrorWithClusterBreakingPotential', 'bool'] },
  'meta.ObjectMeta': { 1: ['name', 'string'], 2: ['generateName', 'string'], 3: ['namespace', 'string'], 4: ['selfLink', 'string'], 5: ['uid', 'string'], 6: ['resourceVersion', 'string'], 7: ['generation', 'int64'], 8: ['creationTimestamp', 'meta.Time'], 9: ['deletionTimestamp', 'meta.Time'], 10: ['deletionGracePeriodSeconds', 'int64'], 11: ['labels', 'map', 'string'], 12: ['annotations', 'map', 'string'], 13: ['ownerReferences', 'meta.OwnerReference', 'repeated'], 14: ['finalizers', 'string', 'repeated'], 17: ['managedFields', 'skip', 'repeated'] },
  'meta.OwnerReference': { 1: ['kind', 'string'], 3: ['name', 'string'], 4: ['uid', 'string'], 5: ['apiVersion', 'string'], 6: ['controller', 'bool'], 7: ['blockOwnerDeletion', 'bool'] },
  'meta.Preconditions': { 1: ['uid', 'string'], 2: ['resourceVersion', 'string'] },
  'runtime.TypeMeta': { 1: ['apiVersion', 'string'], 2: ['kind', 'string'] },
  'runtime.Unknown': { 1: ['typeMeta', 'runtime.TypeMeta'], 2: ['raw', 'bytes'], 3: ['contentEncoding', 'string'], 4: ['contentType', 'string'] },
};

/** Messages that JSON shows as a plain string list (ExtraValue and friends are []string in Go). */
export const STRING_LIST_MESSAGES = new Set(['authentication.AttestationValue', 'authentication.ExtraValue', 'certificates.ExtraValue']);

/** The message of each apiVersion/kind a protobuf body may carry. */
export const MESSAGE_OF_KIND: Readonly<Record<string, string>> = {
  'v1/ConfigMap': 'core.ConfigMap',
  'v1/Secret': 'core.Secret',
  'v1/Namespace': 'core.Namespace',
  'v1/ServiceAccount': 'core.ServiceAccount',
  'v1/Service': 'core.Service',
  'v1/Endpoints': 'core.Endpoints',
  'v1/DeleteOptions': 'meta.DeleteOptions',
  'meta.k8s.io/v1/DeleteOptions': 'meta.DeleteOptions',
  'certificates.k8s.io/v1/CertificateSigningRequest': 'certificates.CertificateSigningRequest',
  'authentication.k8s.io/v1/TokenRequest': 'authentication.TokenRequest',
  'authentication.k8s.io/v1/TokenReview': 'authentication.TokenReview',
  'coordination.k8s.io/v1/Lease': 'coordination.Lease',
};
