// The operator's RBAC, in one place: the chart renders charts/gpugate/files/operator-rbac.yaml (generated
// from this file by `tsx operator/rbac/generate.ts`, checked for drift by test/unit/operator-rbac.test.ts)
// and the cluster tests bind exactly these rules to the operator's service account.
//
// Why each rule is there:
//  - gpugate.io kinds: watched (list/watch), read; status written through the status subresource.
//  - gpubackends/finalizers, apikeys/finalizers (update): a child's ownerReference with
//    blockOwnerDeletion needs it where the OwnerReferencesPermissionEnforcement admission plugin is on.
//  - secrets: read to resolve ApiKey/GpuBackend/Tenant references and the push token; create the key
//    Secret of an ApiKey without secretRef. No update, patch or delete: a generated key is never
//    rewritten, and garbage collection (owner references) removes it.
//  - deployments, services: the children of managed GpuBackends, written with server-side apply (patch);
//    no delete (garbage collection).
//  - endpointslices: the backends' and the data plane's ready addresses. pods: scheduling conditions.
//  - leases (namespaced Role in the operator's namespace): leader election.
//  - events: none; the operator reports through status conditions.
export interface PolicyRule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
  resourceNames?: string[];
}

const READ = ['get', 'list', 'watch'];

export const CLUSTER_RULES: PolicyRule[] = [
  { apiGroups: ['gpugate.io'], resources: ['gpubackends', 'tenants', 'apikeys'], verbs: READ },
  {
    apiGroups: ['gpugate.io'],
    resources: ['gpubackends/status', 'tenants/status', 'apikeys/status'],
    verbs: ['get', 'update', 'patch'],
  },
  {
    apiGroups: ['gpugate.io'],
    resources: ['gpubackends/finalizers', 'apikeys/finalizers'],
    verbs: ['update'],
  },
  { apiGroups: [''], resources: ['secrets'], verbs: [...READ, 'create'] },
  { apiGroups: [''], resources: ['services'], verbs: [...READ, 'create', 'patch'] },
  { apiGroups: [''], resources: ['pods'], verbs: READ },
  { apiGroups: ['apps'], resources: ['deployments'], verbs: [...READ, 'create', 'patch'] },
  { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: READ },
];

/** In the operator's own namespace only. */
export const NAMESPACE_RULES: PolicyRule[] = [
  { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] },
];

export const RBAC_NAMES = { clusterRole: 'gpugate-operator', role: 'gpugate-operator-leader-election' };

/** The ClusterRole and Role as Kubernetes objects (bindings are the chart's: they name the service account). */
export function rbacObjects(namespace: string): object[] {
  return [
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: RBAC_NAMES.clusterRole, labels: { 'app.kubernetes.io/managed-by': 'gpugate' } },
      rules: CLUSTER_RULES,
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: {
        name: RBAC_NAMES.role,
        namespace,
        labels: { 'app.kubernetes.io/managed-by': 'gpugate' },
      },
      rules: NAMESPACE_RULES,
    },
  ];
}

/** The objects plus bindings to one service account (the cluster tests; the chart templates its own). */
export function rbacWithBindings(
  operatorNamespace: string,
  serviceAccount: string,
  clusterRoleName = RBAC_NAMES.clusterRole,
): object[] {
  const [clusterRole, role] = rbacObjects(operatorNamespace) as [Record<string, unknown>, object];
  const subject = { kind: 'ServiceAccount', name: serviceAccount, namespace: operatorNamespace };
  return [
    { ...clusterRole, metadata: { name: clusterRoleName } },
    role,
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: clusterRoleName },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: clusterRoleName },
      subjects: [subject],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: RBAC_NAMES.role, namespace: operatorNamespace },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: RBAC_NAMES.role },
      subjects: [subject],
    },
  ];
}
