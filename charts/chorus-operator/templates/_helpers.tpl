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
