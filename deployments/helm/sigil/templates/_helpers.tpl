{{- define "sigil.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sigil.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sigil.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sigil.postgres" -}}
{{- if or .Values.storage.postgres.dsn .Values.storage.postgres.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "sigil.dsnSecret" -}}
{{- default (printf "%s-storage" (include "sigil.fullname" .)) .Values.storage.postgres.existingSecret -}}
{{- end -}}

{{- define "sigil.tlsSecret" -}}
{{- default (printf "%s-tls" (include "sigil.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{- define "sigil.publicURL" -}}
{{- default (printf "http://%s.%s.svc:%v" (include "sigil.fullname" .) .Release.Namespace .Values.service.httpPort) .Values.publicURL -}}
{{- end -}}

{{/* Checks that fail the render with a message naming the value. */}}
{{- define "sigil.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not (include "sigil.postgres" .)) -}}
{{- fail "replicas > 1 needs storage.postgres.dsn or storage.postgres.existingSecret: the embedded database serves one node" -}}
{{- end -}}
{{- if not (hasPrefix "http://" (include "sigil.publicURL" .)) -}}
{{- fail "publicURL must be an http:// URL: it is written into certificates' CRL distribution points and AIA" -}}
{{- end -}}
{{- if and .Values.tls.existingSecret (or .Values.tls.cert .Values.tls.key) -}}
{{- fail "set tls.existingSecret or tls.cert and tls.key, not both" -}}
{{- end -}}
{{- if ne (not .Values.tls.cert) (not .Values.tls.key) -}}
{{- fail "tls.cert and tls.key go together" -}}
{{- end -}}
{{- if and .Values.hsm.enabled (not .Values.hsm.pinSecret) -}}
{{- fail "hsm.enabled needs hsm.pinSecret (a Secret with the token's user PIN under key \"pin\")" -}}
{{- end -}}
{{- end -}}
