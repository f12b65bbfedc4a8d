{{/* PROBEWATCH_INCIDENT_DB: the fleet's database URL from its Secret, else the SQLite file. */}}
{{- define "probewatch.incidentDbEnv" -}}
{{- if .Values.incidents.database.secretName }}
- name: PROBEWATCH_INCIDENT_DB
  valueFrom:
    secretKeyRef:
      name: {{ .Values.incidents.database.secretName }}
      key: {{ .Values.incidents.database.secretKey }}
{{- else }}
- name: PROBEWATCH_INCIDENT_DB
  value: {{ .Values.incidents.path | quote }}
{{- end }}
{{- end }}

{{/* The probewatch sidecar container (a regular container, or a native sidecar init container). */}}
{{- define "probewatch.sidecarContainer" -}}
- name: probewatch
  image: {{ include "probewatch.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if and (eq .Values.mode "sidecar") .Values.sidecar.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args:
    {{- include "probewatch.serveArgs" . | nindent 4 }}
  env:
    - name: PROBEWATCH_HOME
      value: /var/lib/probewatch
    {{- include "probewatch.incidentDbEnv" . | nindent 4 }}
    {{- if .Values.review.publicUrl }}
    - name: PROBEWATCH_REVIEW_URL
      value: {{ .Values.review.publicUrl | quote }}
    {{- end }}
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- if .Values.incidents.webhook.secretName }}
    - name: PROBEWATCH_WEBHOOK_URL
      valueFrom:
        secretKeyRef:
          name: {{ .Values.incidents.webhook.secretName }}
          key: {{ .Values.incidents.webhook.secretKey }}
    {{- else if .Values.incidents.webhook.url }}
    - name: PROBEWATCH_WEBHOOK_URL
      value: {{ .Values.incidents.webhook.url | quote }}
    {{- end }}
    {{- with .Values.sidecar.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- if eq .Values.mode "standalone" }}
    - name: grpc
      containerPort: {{ .Values.sidecar.grpcPort }}
      protocol: TCP
    {{- end }}
    - name: metrics
      containerPort: {{ .Values.sidecar.metricsPort }}
      protocol: TCP
  startupProbe:
    {{- include "probewatch.healthProbe" (dict "root" . "probe" .Values.sidecar.startupProbe) | nindent 4 }}
  livenessProbe:
    {{- include "probewatch.healthProbe" (dict "root" . "probe" .Values.sidecar.livenessProbe) | nindent 4 }}
  readinessProbe:
    {{- include "probewatch.healthProbe" (dict "root" . "probe" .Values.sidecar.readinessProbe) | nindent 4 }}
  {{- $resources := deepCopy (default dict .Values.sidecar.resources) }}
  {{- if gt (int .Values.sidecar.gpu) 0 }}
  {{- $limits := default dict $resources.limits }}
  {{- $_ := set $limits .Values.sidecar.gpuResourceName (int .Values.sidecar.gpu) }}
  {{- $_ := set $resources "limits" $limits }}
  {{- end }}
  {{- with $resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.sidecar.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: home
      mountPath: /var/lib/probewatch
    - name: tmp
      mountPath: /tmp
    {{- if .Values.models.volume }}
    - name: models
      mountPath: {{ .Values.models.mountPath }}
      readOnly: true
    {{- end }}
    {{- if .Values.tls.enabled }}
    - name: tls
      mountPath: /etc/probewatch/tls
      readOnly: true
    {{- end }}
    {{- if .Values.auth.tokenSecret.name }}
    - name: auth-token
      mountPath: /etc/probewatch/auth
      readOnly: true
    {{- end }}
    {{- if .Values.incidents.pseudonymKeys.secretName }}
    - name: pseudonym-keys
      mountPath: /etc/probewatch/pseudonym
      readOnly: true
    {{- end }}
    {{- range .Values.bundles.configMaps }}
    - name: {{ printf "bundle-cm-%s" . | trunc 63 | trimSuffix "-" }}
      mountPath: {{ printf "/bundles/%s" . }}
      readOnly: true
    {{- end }}
    {{- range .Values.bundles.volumes }}
    - name: {{ printf "bundle-%s" .name | trunc 63 | trimSuffix "-" }}
      mountPath: {{ printf "/bundles/%s" .name }}
      readOnly: true
      {{- if .subPath }}
      subPath: {{ .subPath }}
      {{- end }}
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The init container that provisions a registry model into PROBEWATCH_HOME. */}}
{{- define "probewatch.fetchContainer" -}}
- name: fetch-model
  image: {{ include "probewatch.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["probewatch", "models", "fetch", {{ .Values.sidecar.model | quote }}]
  env:
    - name: PROBEWATCH_HOME
      value: /var/lib/probewatch
  {{- with .Values.models.fetch.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.sidecar.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: home
      mountPath: /var/lib/probewatch
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/* The user's inference server (mode: sidecar). */}}
{{- define "probewatch.inferenceContainer" -}}
{{- $inf := .Values.inference -}}
{{- $vllm := $inf.vllm -}}
- name: {{ $inf.name }}
  image: {{ include "probewatch.inferenceImage" . | quote }}
  imagePullPolicy: {{ $inf.image.pullPolicy }}
  {{- if $vllm.enabled }}
  {{- /* vLLM mode: `vllm serve` loads the probewatch plugin (vllm.general_plugins) by itself */}}
  command: ["vllm", "serve"]
  args:
    {{- $model := default .Values.sidecar.model $vllm.model }}
    {{- if not (hasPrefix "/" $model) }}
    {{- fail "inference.vllm.model (or sidecar.model) must be a model folder path that vLLM can serve" }}
    {{- end }}
    - {{ $model | quote }}
    - --host
    - 0.0.0.0
    - --port
    - {{ (first $inf.ports).containerPort | quote }}
    {{- with $vllm.servedModelName }}
    - --served-model-name
    - {{ . | quote }}
    {{- end }}
    {{- with $vllm.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- else }}
  {{- with $inf.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $inf.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- if or $inf.attachEnv $inf.env (not $inf.image.repository) $vllm.enabled $inf.apiKeySecret.name .Values.auth.tokenSecret.name }}
  env:
    {{- if not $inf.image.repository }}
    - name: PROBEWATCH_HOME
      value: /var/lib/probewatch
    {{- end }}
    {{- if $inf.attachEnv }}
    - name: PROBEWATCH_SIDECAR
      value: {{ printf "127.0.0.1:%v" .Values.sidecar.grpcPort | quote }}
    - name: PROBEWATCH_ON_UNMONITORED
      value: {{ $inf.onUnmonitored | default "allow" | quote }}
    {{- end }}
    {{- if $vllm.enabled }}
    - name: PROBEWATCH_MODE
      value: {{ $vllm.mode | quote }}
    - name: PROBEWATCH_WAIT_S
      value: {{ $vllm.waitSeconds | quote }}
    - name: PROBEWATCH_CLIENT_METRICS_PORT
      value: {{ $vllm.clientMetricsPort | quote }}
    {{- end }}
    {{- if .Values.auth.tokenSecret.name }}
    - name: PROBEWATCH_AUTH_TOKEN_FILE
      value: /etc/probewatch/auth/token
    {{- end }}
    {{- if $inf.apiKeySecret.name }}
    {{- /* probewatch run reads PROBEWATCH_API_KEY; vllm serve reads VLLM_API_KEY (same bearer scheme) */}}
    - name: {{ ternary "VLLM_API_KEY" "PROBEWATCH_API_KEY" $vllm.enabled }}
      valueFrom:
        secretKeyRef:
          name: {{ $inf.apiKeySecret.name }}
          key: {{ $inf.apiKeySecret.key }}
    {{- end }}
    {{- with $inf.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- if or $inf.ports $vllm.enabled }}
  ports:
    {{- with $inf.ports }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- if $vllm.enabled }}
    - name: pw-client
      containerPort: {{ $vllm.clientMetricsPort }}
      protocol: TCP
    {{- end }}
  {{- end }}
  {{- $health := dict "httpGet" (dict "path" "/health" "port" (first $inf.ports).name) }}
  {{- $startup := $inf.startupProbe }}
  {{- $liveness := $inf.livenessProbe }}
  {{- $readiness := $inf.readinessProbe }}
  {{- if $vllm.enabled }}
  {{- /* vLLM answers /health; its start (weights, compilation, the sidecar plan) takes minutes */}}
  {{- $startup = default (merge (dict "periodSeconds" 10 "failureThreshold" 90) $health) $inf.startupProbe }}
  {{- $liveness = default (merge (dict "periodSeconds" 20) $health) $inf.livenessProbe }}
  {{- if and $readiness $readiness.httpGet (eq $readiness.httpGet.path "/healthz") }}
  {{- $readiness = merge (dict "httpGet" (dict "path" "/health" "port" $readiness.httpGet.port)) (omit $readiness "httpGet") }}
  {{- end }}
  {{- end }}
  {{- with $startup }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $liveness }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $readiness }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $resources := deepCopy (default dict $inf.resources) }}
  {{- if gt (int $inf.gpu) 0 }}
  {{- $limits := default dict $resources.limits }}
  {{- $_ := set $limits $inf.gpuResourceName (int $inf.gpu) }}
  {{- $_ := set $resources "limits" $limits }}
  {{- end }}
  {{- with $resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $inf.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if or .Values.models.volume $inf.shm.enabled $inf.volumeMounts (not $inf.image.repository) .Values.auth.tokenSecret.name }}
  volumeMounts:
    {{- if .Values.auth.tokenSecret.name }}
    - name: auth-token
      mountPath: /etc/probewatch/auth
      readOnly: true
    {{- end }}
    {{- if not $inf.image.repository }}
    {{- /* the embedded server (probewatch image) shares PROBEWATCH_HOME: the fetched model */}}
    - name: home
      mountPath: /var/lib/probewatch
    - name: tmp
      mountPath: /tmp
    {{- end }}
    {{- if .Values.models.volume }}
    - name: models
      mountPath: {{ .Values.models.mountPath }}
    {{- end }}
    {{- if $inf.shm.enabled }}
    - name: shm
      mountPath: /dev/shm
    {{- end }}
    {{- with $inf.volumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end }}
