{{/* The release's resource names: the release name, with the chart's name unless it contains it. */}}
{{- define "meshpilot.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "meshpilot.serviceAccountName" -}}
{{- default (include "meshpilot.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "meshpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "meshpilot.labels" -}}
{{ include "meshpilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshpilot
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Settings meshpilot cannot change yet: refuse them instead of silently ignoring them. */}}
{{- define "meshpilot.checkValues" -}}
{{- if ne .Values.rootNamespace "istio-system" -}}
{{- fail (printf "rootNamespace %q: this version of meshpilot supports only istio-system" .Values.rootNamespace) -}}
{{- end -}}
{{- if ne .Values.trustDomain "cluster.local" -}}
{{- fail (printf "trustDomain %q: this version of meshpilot supports only cluster.local" .Values.trustDomain) -}}
{{- end -}}
{{- if not (has .Values.logLevel (list "debug" "info" "warning" "error")) -}}
{{- fail (printf "logLevel %q: one of debug, info, warning, error" .Values.logLevel) -}}
{{- end -}}
{{- end -}}
