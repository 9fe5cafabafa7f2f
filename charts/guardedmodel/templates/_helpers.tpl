{{- define "guardedmodel.name" -}}guardedmodel{{- end -}}

{{- define "guardedmodel.fullname" -}}
{{- if contains "guardedmodel" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-guardedmodel" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "guardedmodel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "guardedmodel.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "guardedmodel.labels" -}}
{{ include "guardedmodel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: guardedmodel
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "guardedmodel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "guardedmodel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "guardedmodel.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "guardedmodel.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{- /* namespace scope: the operator watches only the release namespace, under a Role. */ -}}
{{- define "guardedmodel.namespaced" -}}
{{- if eq .Values.rbac.scope "namespace" -}}
{{- if .Values.watchNamespaces -}}
{{- fail "rbac.scope=namespace watches only the release namespace; leave watchNamespaces empty (or use rbac.scope=cluster)" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{- /* The namespaces the operator watches, comma-separated; empty means all. */ -}}
{{- define "guardedmodel.watchNamespaces" -}}
{{- if include "guardedmodel.namespaced" . -}}
{{- .Release.Namespace -}}
{{- else -}}
{{- join "," .Values.watchNamespaces -}}
{{- end -}}
{{- end -}}

{{- /* What the operator does inside a namespace it watches: the same rules in a ClusterRole or a Role.
Only the verbs it uses (tests/integration/operator/test_least_privilege.py runs it under exactly
these): kopf lists and watches; the operator writes by server-side apply (patch, and create when
the object is new) and merge-patches status; it never updates or deletes: the garbage collector
deletes the children through their ownerReferences, and no handler needs a finalizer or kopf's
progress annotations, so the GuardedModel itself is never written. */ -}}
{{- define "guardedmodel.namespacedRules" -}}
# The resource it reconciles. list/watch: kopf's watch. get: the API server lets the operator
# grant each sidecar's Role (get/list/watch on its own GuardedModel) only what it holds itself.
- apiGroups: [guardedmodel.io]
  resources: [guardedmodels]
  verbs: [get, list, watch]
# Its status: merge patches (reconcile, rollout, scaling); read back through the watch.
- apiGroups: [guardedmodel.io]
  resources: [guardedmodels/status]
  verbs: [patch]
# The children's ownerReferences set blockOwnerDeletion; the OwnerReferencesPermissionEnforcement
# admission plugin admits that only from who may update the owner's finalizers.
- apiGroups: [guardedmodel.io]
  resources: [guardedmodels/finalizers]
  verbs: [update]
# The children of every GuardedModel. list/watch: kopf's watches of its managed children (drift
# repair); create/patch: server-side apply (create when the child does not exist yet).
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch]
# The pods of a model whose repository is fetched (s3, gs, http(s)) and that is not rolled out: a
# failing fetch-model init container's message goes into the ModelFetched condition. A list only.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Each sidecar's Role and RoleBinding. No bind or escalate: the API server checks that the
# operator holds what the Role grants (see guardedmodels above).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, watch, create, patch]
# kopf posts each decision as a core/v1 Event (a POST, never patched).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if and (include "guardedmodel.peering" .) (include "guardedmodel.watchNamespaces" .) }}
# kopf's peering in each watched namespace: it watches the KopfPeering the chart creates
# there and patches its own keep-alive into it.
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [list, watch, patch]
{{- end }}
{{- end -}}
