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

{{- /* What the operator does inside a namespace it watches: the same rules in a ClusterRole or a Role. */ -}}
{{- define "guardedmodel.namespacedRules" -}}
# The resource it reconciles, and its status.
- apiGroups: [guardedmodel.io]
  resources: [guardedmodels]
  verbs: [get, list, watch, patch]
- apiGroups: [guardedmodel.io]
  resources: [guardedmodels/status]
  verbs: [get, patch, update]
# Owner references with blockOwnerDeletion need this when the
# OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: [guardedmodel.io]
  resources: [guardedmodels/finalizers]
  verbs: [update]
# The children of every GuardedModel.
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, update, delete]
# Each sidecar's Role grants get/list/watch on its own GuardedModel; RBAC
# lets the operator grant only what it holds itself (above).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if include "guardedmodel.peering" . }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}
