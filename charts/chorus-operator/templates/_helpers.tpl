{{/* Full name of the release's objects. */}}
{{- define "chorus.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "chorus.serviceAccountName" -}}
{{- default (include "chorus.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "chorus.selectorLabels" -}}
app.kubernetes.io/name: chorus-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "chorus.labels" -}}
{{ include "chorus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chorus
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The namespaces to watch, as a JSON list: watchNamespaces plus the older
watchNamespace, deduplicated; empty means every namespace. */}}
{{- define "chorus.watchNamespaces" -}}
{{- $all := list }}
{{- range .Values.watchNamespaces }}{{- $all = append $all . }}{{- end }}
{{- with .Values.watchNamespace }}{{- $all = append $all . }}{{- end }}
{{- $all | uniq | toJson }}
{{- end -}}

{{/* The tenant RBAC: a ClusterRole (namespace "") or a Role in namespace,
with its binding. Args: root, namespace, secretVerbs. */}}
{{- define "chorus.tenantRbac" -}}
{{- $root := .root }}
{{- $cluster := eq .namespace "" }}
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ if $cluster }}ClusterRole{{ else }}Role{{ end }}
metadata:
  name: {{ include "chorus.fullname" $root }}
  {{- if not $cluster }}
  namespace: {{ .namespace }}
  {{- end }}
  labels:
    {{- include "chorus.labels" $root | nindent 4 }}
rules:
  - apiGroups: ["chorus.dev"]
    resources: ["chattenants"]
    verbs: ["get", "list", "watch", "patch"]
  - apiGroups: ["chorus.dev"]
    resources: ["chattenants/status"]
    verbs: ["patch"]
  - apiGroups: ["chorus.dev"]
    resources: ["chattenants/finalizers"]
    verbs: ["update"]
  - apiGroups: ["apps"]
    resources: ["deployments"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  # Read-only: a release in flight reads its candidate pods (restarts, why
  # they are not ready) to abort a candidate that does not come up; backups
  # read their Job's pod (the dump's size in its termination message).
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "list"]
  - apiGroups: [""]
    resources: ["services"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: {{ .secretVerbs | toJson }}
  # ConfigMaps spec.runtime.env reads: their values go into a checksum on
  # the pod template, so a change rolls the pods.
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["get"]
  - apiGroups: ["policy"]
    resources: ["poddisruptionbudgets"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  - apiGroups: ["autoscaling"]
    resources: ["horizontalpodautoscalers"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  - apiGroups: ["networking.k8s.io"]
    resources: ["networkpolicies", "ingresses"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  # spec.backup: the CronJob is a child; its Jobs (and their pods, above)
  # are read for status.backup; the claim is checked before a Job waits on it.
  - apiGroups: ["batch"]
    resources: ["cronjobs"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  - apiGroups: ["batch"]
    resources: ["jobs"]
    verbs: ["get", "list", "watch"]
  - apiGroups: [""]
    resources: ["persistentvolumeclaims"]
    verbs: ["get"]
  - apiGroups: ["gateway.networking.k8s.io"]
    resources: ["httproutes"]
    verbs: ["get", "list", "create", "patch", "delete"]
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ if $cluster }}ClusterRoleBinding{{ else }}RoleBinding{{ end }}
metadata:
  name: {{ include "chorus.fullname" $root }}
  {{- if not $cluster }}
  namespace: {{ .namespace }}
  {{- end }}
  labels:
    {{- include "chorus.labels" $root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ if $cluster }}ClusterRole{{ else }}Role{{ end }}
  name: {{ include "chorus.fullname" $root }}
subjects:
  - kind: ServiceAccount
    name: {{ include "chorus.serviceAccountName" $root }}
    namespace: {{ $root.Release.Namespace }}
{{- end -}}
