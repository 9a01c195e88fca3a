{{/* Names, labels and the pieces every workload shares. */}}

{{- define "gpugate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gpugate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gpugate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "gpugate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpugate
{{- end }}

{{/* Selector labels of one component: include "gpugate.selectorLabels" (list . "dataplane") */}}
{{- define "gpugate.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "gpugate.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "gpugate.componentLabels" -}}
{{ include "gpugate.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "gpugate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "gpugate.operatorName" -}}{{ include "gpugate.fullname" . }}-operator{{- end }}
{{- define "gpugate.dataplaneName" -}}{{ include "gpugate.fullname" . }}-dataplane{{- end }}
{{- define "gpugate.adminServiceName" -}}{{ include "gpugate.fullname" . }}-dataplane-admin{{- end }}
{{- define "gpugate.postgresName" -}}{{ include "gpugate.fullname" . }}-postgres{{- end }}

{{- define "gpugate.pushTokenSecret" -}}
{{- default (printf "%s-push-token" (include "gpugate.fullname" .)) .Values.pushToken.existingSecret }}
{{- end }}

{{/* The Secret and key holding DATABASE_URL, or nothing when metering has no database. */}}
{{- define "gpugate.databaseSecret" -}}
{{- if .Values.postgres.existingSecret }}{{ .Values.postgres.existingSecret }}
{{- else if .Values.postgres.bundled.enabled }}{{ include "gpugate.postgresName" . }}
{{- end }}
{{- end }}
{{- define "gpugate.databaseSecretKey" -}}
{{- if .Values.postgres.existingSecret }}{{ .Values.postgres.secretKey }}{{ else }}url{{ end }}
{{- end }}

{{/* DATABASE_URL for both programs, when metering has a database. */}}
{{- define "gpugate.databaseEnv" -}}
{{- if include "gpugate.databaseSecret" . }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "gpugate.databaseSecret" . }}
      key: {{ include "gpugate.databaseSecretKey" . }}
{{- end }}
{{- end }}

{{- define "gpugate.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
- name: push-token
  secret:
    secretName: {{ include "gpugate.pushTokenSecret" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.pushToken.secretKey }}
        path: token
{{- end }}

{{- define "gpugate.commonMounts" -}}
- name: tmp
  mountPath: /tmp
- name: push-token
  mountPath: /var/run/gpugate/push-token
  readOnly: true
{{- end }}
