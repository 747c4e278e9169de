{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "mlipilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-mlipilot, cut to 40 characters so "<fullname>-orchestrator" and KubeRay's
"<fullname>-ray-head-svc" stay within 63. */}}
{{- define "mlipilot.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mlipilot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mlipilot.labels" -}}
helm.sh/chart: {{ include "mlipilot.chart" . }}
{{ include "mlipilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mlipilot
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mlipilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlipilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "root" $ "component" "orchestrator"). */}}
{{- define "mlipilot.componentLabels" -}}
{{ include "mlipilot.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mlipilot.componentSelectorLabels" -}}
{{ include "mlipilot.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mlipilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mlipilot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mlipilot.clusterViewName" -}}
{{- printf "%s-cluster-view" (include "mlipilot.fullname" .) }}
{{- end }}

{{- define "mlipilot.orchestratorName" -}}
{{- printf "%s-orchestrator" (include "mlipilot.fullname" .) }}
{{- end }}

{{- define "mlipilot.scorecardName" -}}
{{- printf "%s-scorecard" (include "mlipilot.fullname" .) }}
{{- end }}

{{- define "mlipilot.vllmName" -}}
{{- printf "%s-vllm" (include "mlipilot.fullname" .) }}
{{- end }}

{{- define "mlipilot.rayClusterName" -}}
{{- printf "%s-ray" (include "mlipilot.fullname" .) }}
{{- end }}

{{/* KubeRay names the head Service "<RayCluster>-head-svc". */}}
{{- define "mlipilot.rayHeadService" -}}
{{- printf "%s-head-svc" (include "mlipilot.rayClusterName" .) }}
{{- end }}

{{- define "mlipilot.runsClaimName" -}}
{{- default (printf "%s-runs" (include "mlipilot.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* In-cluster addresses -------------------------------------------------------------- */}}

{{/* host:port of the scorecard, as its TLS certificate names it. */}}
{{- define "mlipilot.scorecardAddress" -}}
{{- printf "%s.%s.svc:%d" (include "mlipilot.scorecardName" .) .Release.Namespace (int .Values.scorecard.port) }}
{{- end }}

{{- define "mlipilot.orchestratorAddress" -}}
{{- printf "%s.%s.svc:%d" (include "mlipilot.orchestratorName" .) .Release.Namespace (int .Values.orchestrator.port) }}
{{- end }}

{{- define "mlipilot.vllmBaseUrl" -}}
{{- printf "http://%s.%s.svc:%d/v1" (include "mlipilot.vllmName" .) .Release.Namespace (int .Values.vllm.port) }}
{{- end }}

{{- define "mlipilot.servedModelName" -}}
{{- default .Values.vllm.model.name .Values.vllm.model.servedName }}
{{- end }}

{{/* Secrets ---------------------------------------------------------------------------- */}}

{{- define "mlipilot.authSecretName" -}}
{{- default (printf "%s-auth" (include "mlipilot.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "mlipilot.vllmApiKeySecretName" -}}
{{- default (printf "%s-vllm-api-key" (include "mlipilot.fullname" .)) .Values.vllm.apiKey.existingSecret }}
{{- end }}

{{/* The Ray token: KubeRay's authOptions.secretName reads it under the key auth_token. */}}
{{- define "mlipilot.rayAuthSecretName" -}}
{{- default (printf "%s-ray-auth" (include "mlipilot.fullname" .)) .Values.ray.auth.existingSecret }}
{{- end }}

{{/* TLS -------------------------------------------------------------------------------- */}}

{{/* "true" when the services serve TLS, else empty: tls.mode enabled, or auto with
tls.existingSecret or the cert-manager.io/v1 API (`helm template --api-versions
cert-manager.io/v1` stands in for a cluster that serves it). */}}
{{- define "mlipilot.tlsOn" -}}
{{- $certManager := .Capabilities.APIVersions.Has "cert-manager.io/v1" }}
{{- $source := or .Values.tls.existingSecret $certManager }}
{{- if eq .Values.tls.mode "enabled" }}
{{- if not $source }}
{{- fail "tls.mode=enabled needs a certificate: set tls.existingSecret (a Secret with tls.crt, tls.key and ca.crt) or install cert-manager (the cluster serves no cert-manager.io/v1 API)" }}
{{- end }}
{{- "true" }}
{{- else if and (eq .Values.tls.mode "auto") $source }}
{{- "true" }}
{{- end }}
{{- end }}

{{/* "true" when the chart has cert-manager issue the services' certificate. */}}
{{- define "mlipilot.tlsIssued" -}}
{{- if and (include "mlipilot.tlsOn" .) (not .Values.tls.existingSecret) }}
{{- "true" }}
{{- end }}
{{- end }}

{{- define "mlipilot.tlsSecretName" -}}
{{- default (printf "%s-grpc-tls" (include "mlipilot.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/* Checks of value combinations the schema cannot express; renders nothing. */}}
{{- define "mlipilot.validate" -}}
{{- if and (not .Values.auth.enabled) (not .Values.auth.allowInsecure) }}
{{- fail "auth.enabled=false lets anyone who reaches the services start and cancel campaigns and score models, and the servers refuse to listen beyond loopback without a token: set auth.allowInsecure=true as well to confirm (they then run with --insecure)" }}
{{- end }}
{{- if hasKey .Values.ray.head.rayStartParams "dashboard-host" }}
{{- fail "ray.head.rayStartParams.dashboard-host: set ray.head.dashboardHost instead" }}
{{- end }}
{{- end }}

{{/* A random secret value that survives upgrades: (dict "root" $ "name" secret "key" key). */}}
{{- define "mlipilot.persistentRandom" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum 48 | b64enc }}
{{- end }}
{{- end }}

{{/* Images ----------------------------------------------------------------------------- */}}

{{/* (dict "image" .Values.image "tag" default-tag) -> repository:tag or repository@digest */}}
{{- define "mlipilot.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .tag .image.tag) }}
{{- end }}
{{- end }}

{{- define "mlipilot.image" -}}
{{- include "mlipilot.imageRef" (dict "image" .Values.image "tag" .Chart.AppVersion) }}
{{- end }}

{{/* The CUDA build of the mlipilot image: same repository and version, tag suffix -cuda. */}}
{{- define "mlipilot.cudaImage" -}}
{{- printf "%s:%s-cuda" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Security --------------------------------------------------------------------------- */}}

{{- define "mlipilot.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "mlipilot.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* Probes ----------------------------------------------------------------------------- */}}

{{/* gRPC health probes: (dict "root" $ "port" p "service" full-name "host" tls-name "probes" p).
Native gRPC probes without TLS; with TLS kubelet cannot probe (it speaks plaintext only), so the
container checks itself with `mlipilot cluster grpc-health`. Startup and liveness ask for the
whole server (""), readiness for the service, which reports NOT_SERVING while draining. */}}
{{- define "mlipilot.grpcProbes" -}}
{{- $ctx := . }}
{{- range $kind := list "startup" "liveness" "readiness" }}
{{- $p := index $ctx.probes $kind }}
{{- $service := ternary $ctx.service "" (eq $kind "readiness") }}
{{ $kind }}Probe:
  {{- if include "mlipilot.tlsOn" $ctx.root }}
  exec:
    command:
      - mlipilot
      - cluster
      - grpc-health
      - {{ printf "127.0.0.1:%d" (int $ctx.port) | quote }}
      - --service
      - {{ $service | quote }}
      - --tls-ca
      - /etc/mlipilot/tls/ca.crt
      - --tls-server-name
      - {{ $ctx.host | quote }}
      - --timeout
      - {{ sub (int $p.timeoutSeconds) 1 | max 1 | quote }}
  {{- else }}
  grpc:
    port: {{ $ctx.port }}
    service: {{ $service | quote }}
  {{- end }}
  periodSeconds: {{ $p.periodSeconds }}
  failureThreshold: {{ $p.failureThreshold }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
{{- end }}
{{- end }}

{{/* Volumes of the mlipilot pods ------------------------------------------------------- */}}

{{/* Mounts of the state volume: (dict "data" "rw" | "ro" | "none"). Runs at the same path in
every pod (Ray actors get absolute paths from the orchestrator), read-write. The data sets (the
test split among them) only where .data says: the orchestrator builds them (rw), the scorecard
reads them (ro), Ray pods never see them (none: the orchestrator copies each campaign's
training split into its run folder). /tmp is writable (read-only root filesystem). */}}
{{- define "mlipilot.stateVolumeMounts" -}}
- name: state
  mountPath: /var/lib/mlipilot/runs
  subPath: runs
{{- if ne .data "none" }}
- name: state
  mountPath: /var/lib/mlipilot/data
  subPath: data
  {{- if eq .data "ro" }}
  readOnly: true
  {{- end }}
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "mlipilot.stateVolumes" -}}
- name: state
  {{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "mlipilot.runsClaimName" . }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: tmp
  emptyDir: {}
{{- end }}

{{/* Mounts of the orchestrator and the scorecard: (dict "root" $ "data" "rw" | "ro"). */}}
{{- define "mlipilot.serviceVolumeMounts" -}}
{{ include "mlipilot.stateVolumeMounts" (dict "data" .data) }}
- name: scorecards
  mountPath: /var/lib/mlipilot/scorecard
  readOnly: true
{{- if .root.Values.auth.enabled }}
- name: auth
  mountPath: /etc/mlipilot/auth
  readOnly: true
{{- end }}
{{- if include "mlipilot.tlsOn" .root }}
- name: tls
  mountPath: /etc/mlipilot/tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "mlipilot.serviceVolumes" -}}
{{ include "mlipilot.stateVolumes" . }}
- name: scorecards
  configMap:
    name: {{ printf "%s-scorecards" (include "mlipilot.fullname" .) }}
{{- if .Values.auth.enabled }}
- name: auth
  secret:
    secretName: {{ include "mlipilot.authSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.secretKey }}
        path: token
{{- end }}
{{- if include "mlipilot.tlsOn" . }}
- name: tls
  secret:
    secretName: {{ include "mlipilot.tlsSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* Arguments every mlipilot server takes: auth, TLS, metrics. They listen on every address
(the Service and NetworkPolicy decide who reaches them), which the servers allow only with a
token or --insecure. The token also guards /metrics. */}}
{{- define "mlipilot.serverArgs" -}}
- --host
- 0.0.0.0
{{- if .root.Values.auth.enabled }}
- --token-file
- /etc/mlipilot/auth/token
{{- else }}
- --insecure
{{- end }}
{{- if include "mlipilot.tlsOn" .root }}
- --tls-cert
- /etc/mlipilot/tls/tls.crt
- --tls-key
- /etc/mlipilot/tls/tls.key
{{- end }}
- --metrics-port
- {{ .metricsPort | quote }}
{{- end }}

{{/* Environment of every mlipilot container: caches in /tmp (read-only root filesystem). */}}
{{- define "mlipilot.baseEnv" -}}
- name: HOME
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: PYTHONUNBUFFERED
  value: "1"
{{- end }}
