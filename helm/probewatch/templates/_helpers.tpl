{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "probewatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "probewatch.fullname" -}}
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

{{- define "probewatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "probewatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "probewatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels ------------------------------------------------------------------------------ */}}

{{- define "probewatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "probewatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "probewatch.labels" -}}
helm.sh/chart: {{ include "probewatch.chart" . }}
{{ include "probewatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: probewatch
{{- end }}

{{/* Images ------------------------------------------------------------------------------ */}}

{{- define "probewatch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "probewatch.inferenceImage" -}}
{{- if .Values.inference.image.repository }}
{{- printf "%s:%s" .Values.inference.image.repository (required "inference.image.tag is required with inference.image.repository" .Values.inference.image.tag) }}
{{- else }}
{{- include "probewatch.image" . }}
{{- end }}
{{- end }}

{{/* Derived settings --------------------------------------------------------------------- */}}

{{/* "true" when the model is a registry name the init container fetches (not a /path). */}}
{{- define "probewatch.fetchModel" -}}
{{- if and .Values.models.fetch.enabled (not (hasPrefix "/" .Values.sidecar.model)) }}true{{ end }}
{{- end }}

{{/* Health probe kind: grpc (kubelet native) or exec (probewatch-healthcheck, TLS-capable). */}}
{{- define "probewatch.healthProbeKind" -}}
{{- if eq .Values.sidecar.healthProbe "auto" }}
{{- if or .Values.tls.enabled (eq .Values.mode "sidecar") }}exec{{ else }}grpc{{ end }}
{{- else }}
{{- .Values.sidecar.healthProbe }}
{{- end }}
{{- end }}

{{- define "probewatch.tlsServerName" -}}
{{- default (printf "%s.%s.svc" (include "probewatch.fullname" .) .Release.Namespace) .Values.tls.serverName }}
{{- end }}

{{/* One health probe body; call with (dict "root" $ "probe" .Values.sidecar.livenessProbe). */}}
{{- define "probewatch.healthProbe" -}}
{{- $root := .root }}
{{- if eq (include "probewatch.healthProbeKind" $root) "grpc" -}}
grpc:
  port: {{ $root.Values.sidecar.grpcPort }}
  service: ""
{{- else -}}
exec:
  command:
    - probewatch-healthcheck
    - --address
    - {{ printf "127.0.0.1:%v" $root.Values.sidecar.grpcPort | quote }}
    - --timeout
    - {{ max 1 (sub (int (default 5 .probe.timeoutSeconds)) 1) | quote }}
    {{- if $root.Values.tls.enabled }}
    - --tls
    - --ca
    - /etc/probewatch/tls/ca.crt
    - --server-name
    - {{ include "probewatch.tlsServerName" $root | quote }}
    {{- if $root.Values.tls.clientAuth }}
    - --cert
    - /etc/probewatch/tls/tls.crt
    - --key
    - /etc/probewatch/tls/tls.key
    {{- end }}
    {{- end }}
{{- end }}
{{- with .probe }}
periodSeconds: {{ .periodSeconds }}
failureThreshold: {{ .failureThreshold }}
timeoutSeconds: {{ .timeoutSeconds }}
{{- end }}
{{- end }}

{{/* Arguments of `probewatch serve` (the image's entrypoint). */}}
{{- define "probewatch.serveArgs" -}}
- --host
{{- /* sidecar mode: only the pod's own containers reach the gRPC port */}}
- {{ ternary "127.0.0.1" "0.0.0.0" (eq .Values.mode "sidecar") | quote }}
- --port
- {{ .Values.sidecar.grpcPort | quote }}
- --metrics-host
- "0.0.0.0"
- --metrics-port
- {{ .Values.sidecar.metricsPort | quote }}
- --queue-size
- {{ .Values.sidecar.queueSize | quote }}
{{- with .Values.sidecar.queueBytes }}
- --queue-bytes
- {{ . | quote }}
{{- end }}
{{- with .Values.sidecar.maxClientMBPerSecond }}
- --max-client-mb-per-s
- {{ . | quote }}
{{- end }}
- --shutdown-grace
- {{ .Values.sidecar.shutdownGraceSeconds | quote }}
- --drift-window
- {{ .Values.sidecar.driftWindow | quote }}
- --store-text
- {{ .Values.incidents.storeText | quote }}
- --retention-days
- {{ .Values.incidents.retentionDays | quote }}
{{- if .Values.incidents.pseudonymKeys.secretName }}
- --pseudonym-key-file
- /etc/probewatch/pseudonym/keys
{{- end }}
{{- range .Values.incidents.privateMetadataKeys }}
- --private-metadata-key
- {{ . | quote }}
{{- end }}
{{- if .Values.sidecar.reflection }}
- --reflection
{{- end }}
{{- if .Values.auth.tokenSecret.name }}
- --auth-token-file
- /etc/probewatch/auth/token
{{- end }}
{{- /* the sidecar refuses 0.0.0.0 with neither token nor mutual TLS: only the explicit opt-in passes it */}}
{{- if and (eq .Values.mode "standalone") .Values.auth.allowInsecureStandalone (not .Values.auth.tokenSecret.name) (not (and .Values.tls.enabled .Values.tls.clientAuth)) }}
- --allow-insecure
{{- end }}
- --model
- {{ .Values.sidecar.model | quote }}
{{- range .Values.bundles.configMaps }}
- --bundles
- {{ printf "/bundles/%s" . | quote }}
{{- end }}
{{- range .Values.bundles.volumes }}
- --bundles
- {{ printf "/bundles/%s" .name | quote }}
{{- end }}
{{- if .Values.tls.enabled }}
- --tls-cert
- /etc/probewatch/tls/tls.crt
- --tls-key
- /etc/probewatch/tls/tls.key
{{- if .Values.tls.clientAuth }}
- --tls-client-ca
- /etc/probewatch/tls/ca.crt
{{- end }}
{{- end }}
{{- range .Values.sidecar.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Validation of combinations the schema cannot express. */}}
{{- define "probewatch.validate" -}}
{{- if and .Values.review.enabled (not .Values.incidents.database.secretName) }}
{{- fail "review.enabled needs incidents.database.secretName: the review app and every sidecar share one database (PostgreSQL URL in a Secret)" }}
{{- end }}
{{- if and .Values.review.enabled (not (or .Values.review.auth.trustedHeaders .Values.review.auth.tokenSecret)) }}
{{- fail "review.enabled needs reviewer authentication: review.auth.trustedHeaders (behind oauth2-proxy) or review.auth.tokenSecret" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled requires tls.secretName (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- if and (eq .Values.mode "standalone") .Values.sidecar.nativeSidecar }}
{{- fail "sidecar.nativeSidecar applies to mode: sidecar only" }}
{{- end }}
{{- if and (eq .Values.mode "standalone") (not (and .Values.tls.enabled .Values.tls.clientAuth)) (not .Values.auth.allowInsecureStandalone) }}
{{- fail "mode: standalone exposes the gRPC port on the Service: enable mutual TLS (tls.enabled, tls.clientAuth, tls.secretName), or set auth.allowInsecureStandalone=true to accept plaintext clients nobody authenticates" }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") (eq .Values.sidecar.healthProbe "grpc") }}
{{- fail "sidecar.healthProbe: grpc cannot work in sidecar mode: the kubelet's gRPC probe connects to the pod IP, but the sidecar listens on 127.0.0.1; use exec (or auto)" }}
{{- end }}
{{- if ge (int .Values.sidecar.shutdownGraceSeconds) (int .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "sidecar.shutdownGraceSeconds (%v) must be below terminationGracePeriodSeconds (%v): the pod is killed before open generations get their summaries and incidents are flushed" .Values.sidecar.shutdownGraceSeconds .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- if and .Values.home.persistence.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "home.persistence holds one SQLite incident store and supports replicaCount: 1; with more replicas keep the emptyDir and collect incidents through incidents.webhook" }}
{{- end }}
{{- end }}

{{/* The review app's labels: its own app name, so the sidecar Deployment, Service and ServiceMonitor never select its pods. */}}
{{- define "probewatch.reviewSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-review" (include "probewatch.name" .) }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "probewatch.reviewLabels" -}}
helm.sh/chart: {{ include "probewatch.chart" . }}
{{ include "probewatch.reviewSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: probewatch
app.kubernetes.io/component: review
{{- end }}
