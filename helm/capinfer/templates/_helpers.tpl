{{/* Chart name, overridable. */}}
{{- define "capinfer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `<release>-<chart>`, or the release name alone when it already contains the chart name. */}}
{{- define "capinfer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator pods' selector. */}}
{{- define "capinfer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capinfer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object; each template adds its app.kubernetes.io/component. */}}
{{- define "capinfer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "capinfer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: capinfer
{{- end }}

{{- define "capinfer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "capinfer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: digest wins over tag; the tag defaults to appVersion. */}}
{{- define "capinfer.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The sidecar defaults to the operator's own image (the same reference, digest included). */}}
{{- define "capinfer.sidecarImage" -}}
{{- if and (not .Values.sidecarImage.repository) (not .Values.sidecarImage.tag) }}
{{- include "capinfer.image" . }}
{{- else }}
{{- $repository := default .Values.image.repository .Values.sidecarImage.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.sidecarImage.tag }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* Cluster-wide when no namespace is listed. */}}
{{- define "capinfer.clusterWide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}
