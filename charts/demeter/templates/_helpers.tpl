{{/*
Names, labels, images and shared fragments of the Demeter chart.
The agent sidecar (demeter.agentSidecar / demeter.agentPodTemplate) is defined here because three places render it:
the sidecar ConfigMap the coordinator injects from, the FlinkDeployments of `jobs`, and the README example.
*/}}

{{/* Chart name. */}}
{{- define "demeter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. Truncated at 63 chars (DNS label); the release name is used alone when it already
contains the chart name.
*/}}
{{- define "demeter.fullname" -}}
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

{{/* Chart label value. */}}
{{- define "demeter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "demeter.labels" -}}
helm.sh/chart: {{ include "demeter.chart" . }}
app.kubernetes.io/name: {{ include "demeter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: demeter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels; call with (dict "root" $ "component" "coordinator"). */}}
{{- define "demeter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "demeter.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of a component's objects; call with (dict "root" $ "component" "coordinator"). */}}
{{- define "demeter.componentLabels" -}}
{{ include "demeter.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Image reference, like the Flink operator's imagePath: a digest wins over the tag; the tag defaults to the
appVersion. Call with (dict "image" .Values.coordinator.image "root" $).
*/}}
{{- define "demeter.imagePath" -}}
{{- $repo := .image.repository -}}
{{- if .image.registry -}}
{{- $repo = printf "%s/%s" .image.registry .image.repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString (default .root.Chart.AppVersion .image.tag)) -}}
{{- end -}}
{{- end }}

{{/* Object names. */}}
{{- define "demeter.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "demeter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "demeter.serviceAccountName" -}}
{{- if .Values.coordinator.serviceAccount.create }}
{{- default (include "demeter.coordinator.fullname" .) .Values.coordinator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.coordinator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "demeter.leaseName" -}}
{{- default (printf "%s-demeter-leader" .Release.Name) .Values.coordinator.leaderElection.leaseName }}
{{- end }}

{{- define "demeter.agentSidecarConfigMapName" -}}
{{- printf "%s-demeter-agent-sidecar" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "demeter.nats.fullname" -}}
{{- default (printf "%s-nats" (include "demeter.fullname" .)) .Values.nats.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "demeter.apiTokenSecretName" -}}
{{- default (printf "%s-api-token" (include "demeter.fullname" .)) .Values.coordinator.apiToken.existingSecret }}
{{- end }}

{{- define "demeter.coordinatorNatsSecretName" -}}
{{- default (printf "%s-nats-coordinator" (include "demeter.fullname" .)) .Values.coordinator.nats.existingSecret }}
{{- end }}

{{- define "demeter.agentNatsSecretName" -}}
{{- default (printf "%s-nats-agent" (include "demeter.fullname" .)) .Values.agent.nats.existingSecret }}
{{- end }}

{{/*
NATS URL seen by the coordinator and the agents. Agents run in other namespaces, so the bundled server is
addressed by its namespace-qualified Service name.
*/}}
{{- define "demeter.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s.%s.svc:%v" (include "demeter.nats.fullname" .) .Release.Namespace (int .Values.nats.service.port) -}}
{{- else -}}
{{- .Values.nats.external.url -}}
{{- end -}}
{{- end }}

{{/* Cross-field validation; included once from the coordinator Deployment. */}}
{{- define "demeter.validate" -}}
{{- if not (has .Values.mode (list "recommend-only" "apply")) }}
{{- fail (printf "mode must be recommend-only or apply, got %q" .Values.mode) }}
{{- end }}
{{- if not (has .Values.backend (list "kubernetes" "flink-rest")) }}
{{- fail (printf "backend must be kubernetes or flink-rest, got %q" .Values.backend) }}
{{- end }}
{{- if and .Values.nats.enabled .Values.nats.external.url }}
{{- fail "nats.external.url is set but nats.enabled=true: set nats.enabled=false to use an external NATS" }}
{{- end }}
{{- if and (not .Values.nats.enabled) (not .Values.nats.external.url) }}
{{- fail "nats.enabled=false requires nats.external.url" }}
{{- end }}
{{- if and .Values.nats.enabled (not .Values.nats.auth.enabled) }}
{{- fail "the bundled NATS always uses authentication (separate coordinator and agent users): nats.auth.enabled must be true" }}
{{- end }}
{{- if and .Values.nats.enabled (or .Values.coordinator.nats.secretKeys.creds .Values.coordinator.nats.secretKeys.token .Values.agent.nats.secretKeys.creds .Values.agent.nats.secretKeys.token) }}
{{- fail "the bundled NATS authenticates with user/password only: secretKeys.token and secretKeys.creds are for an external NATS" }}
{{- end }}
{{- if and (not .Values.nats.enabled) .Values.nats.auth.enabled }}
{{- if and (not .Values.coordinator.nats.existingSecret) (not .Values.coordinator.nats.password) }}
{{- fail "external NATS with nats.auth.enabled: set coordinator.nats.existingSecret (or coordinator.nats.password); a generated password would be unknown to your server" }}
{{- end }}
{{- if and (not .Values.agent.nats.existingSecret) (not .Values.agent.nats.password) }}
{{- fail "external NATS with nats.auth.enabled: set agent.nats.existingSecret (or agent.nats.password); a generated password would be unknown to your server" }}
{{- end }}
{{- end }}
{{- if and (gt (int .Values.coordinator.replicas) 1) (not .Values.coordinator.leaderElection.enabled) }}
{{- fail "coordinator.replicas > 1 requires coordinator.leaderElection.enabled=true" }}
{{- end }}
{{- if and (gt (int .Values.coordinator.replicas) 1) .Values.coordinator.persistence.enabled }}
{{- fail "coordinator.persistence.enabled=true supports replicas: 1 only (one SQLite file cannot be shared by several pods); use replicas: 1 with persistence, or replicas > 1 with the emptyDir data dir" }}
{{- end }}
{{- range .Values.jobs }}
{{- if not .name }}
{{- fail "every entry of jobs needs a name" }}
{{- end }}
{{- $ns := default $.Release.Namespace .namespace }}
{{- if and $.Values.watchNamespaces (not (has $ns $.Values.watchNamespaces)) }}
{{- fail (printf "jobs[%s] is in namespace %q which is not in watchNamespaces %v: the coordinator could not manage it" .name $ns $.Values.watchNamespaces) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Namespaces in which the agents run and thus need the agent NATS Secret (and where namespaced RBAC applies):
release namespace, watchNamespaces, job namespaces and agent.nats.secretNamespaces; sorted, unique.
*/}}
{{- define "demeter.agentNamespaces" -}}
{{- $nss := list .Release.Namespace }}
{{- range .Values.watchNamespaces }}{{ $nss = append $nss . }}{{ end }}
{{- range .Values.jobs }}{{ $nss = append $nss (default $.Release.Namespace .namespace) }}{{ end }}
{{- range .Values.agent.nats.secretNamespaces }}{{ $nss = append $nss . }}{{ end }}
{{- $nss | uniq | sortAlpha | toJson }}
{{- end }}

{{/*
A NATS credential from a Secret: the explicit value, else the value in the live Secret (lookup, so upgrades keep
it), else a random one. Call with (dict "value" .. "namespace" .. "secret" .. "key" ..).
*/}}
{{- define "demeter.secretValue" -}}
{{- if .value -}}
{{- .value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .namespace .secret -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
Environment variables wiring NATS credentials from a Secret.
Call with (dict "prefix" "DEMETER_AGENT" "secret" name "keys" secretKeys "auth" bool "credsPath" path "optional" bool).
optional: the pod starts even if the Secret is missing (used for the agent: a sidecar must never keep a
TaskManager from starting; the agent just cannot authenticate until the Secret exists).
*/}}
{{- define "demeter.natsCredentialEnv" -}}
{{- if .auth }}
{{- if .keys.user }}
- name: {{ .prefix }}_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .keys.user }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}
{{- if .keys.password }}
- name: {{ .prefix }}_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .keys.password }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}
{{- if .keys.token }}
- name: {{ .prefix }}_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .keys.token }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}
{{- if .keys.creds }}
- name: {{ .prefix }}_NATS_CREDS
  value: {{ printf "%s/%s" .credsPath .keys.creds | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------------------------------------------
Agent sidecar.
------------------------------------------------------------------------------------------------------------ */}}

{{/*
The agent sidecar container. It scrapes the Flink Prometheus reporter of its TaskManager on localhost and
publishes to NATS. Identity comes from the downward API: the Flink operator labels TaskManager pods
`app: <deployment>`, `component: taskmanager`.
*/}}
{{- define "demeter.agentSidecar" -}}
{{- $a := .Values.agent -}}
name: demeter-agent
image: {{ include "demeter.imagePath" (dict "image" $a.image "root" .) | quote }}
imagePullPolicy: {{ $a.image.pullPolicy }}
env:
  - name: DEMETER_AGENT_NATS_URL
    value: {{ include "demeter.natsUrl" . | quote }}
  - name: DEMETER_AGENT_METRICS_URL
    value: {{ printf "http://localhost:%v/metrics" (int $a.metricsPort) | quote }}
  - name: DEMETER_AGENT_LISTEN
    value: {{ printf "0.0.0.0:%v" (int $a.listenPort) | quote }}
  - name: DEMETER_AGENT_INTERVAL
    value: {{ $a.interval | quote }}
  - name: DEMETER_AGENT_LOG_FORMAT
    value: {{ $a.logFormat | quote }}
  - name: DEMETER_AGENT_BUFFER_SIZE
    value: {{ $a.bufferSize | toString | quote }}
  - name: DEMETER_AGENT_SPOOL_DIR
    value: {{ $a.spool.dir | quote }}
  - name: DEMETER_AGENT_NAMESPACE
    valueFrom:
      fieldRef:
        fieldPath: metadata.namespace
  - name: DEMETER_AGENT_POD
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  - name: DEMETER_AGENT_TASKMANAGER
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  - name: DEMETER_AGENT_DEPLOYMENT
    valueFrom:
      fieldRef:
        fieldPath: metadata.labels['app']
  {{- with include "demeter.natsCredentialEnv" (dict "prefix" "DEMETER_AGENT" "secret" (include "demeter.agentNatsSecretName" .) "keys" $a.nats.secretKeys "auth" .Values.nats.auth.enabled "credsPath" "/etc/demeter/nats-creds" "optional" true) | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- if .Values.nats.tls.ca.secretName }}
  - name: DEMETER_AGENT_NATS_TLS_CA
    value: {{ printf "/etc/demeter/nats-ca/%s" .Values.nats.tls.ca.key | quote }}
  {{- end }}
  {{- with $a.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  - name: agent-metrics
    containerPort: {{ int $a.listenPort }}
    protocol: TCP
livenessProbe:
  httpGet:
    path: /healthz
    port: agent-metrics
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: agent-metrics
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 3
resources:
  {{- toYaml $a.resources | nindent 2 }}
securityContext:
  {{- toYaml $a.securityContext | nindent 2 }}
volumeMounts:
  - name: demeter-agent-spool
    mountPath: {{ $a.spool.dir }}
  {{- if and .Values.nats.auth.enabled $a.nats.secretKeys.creds }}
  - name: demeter-agent-nats-creds
    mountPath: /etc/demeter/nats-creds
    readOnly: true
  {{- end }}
  {{- if .Values.nats.tls.ca.secretName }}
  - name: demeter-agent-nats-ca
    mountPath: /etc/demeter/nats-ca
    readOnly: true
  {{- end }}
{{- end }}

{{/* Volumes the agent sidecar needs in the TaskManager pod. */}}
{{- define "demeter.agentVolumes" -}}
- name: demeter-agent-spool
  emptyDir:
    sizeLimit: {{ .Values.agent.spool.sizeLimit }}
{{- if and .Values.nats.auth.enabled .Values.agent.nats.secretKeys.creds }}
- name: demeter-agent-nats-creds
  secret:
    secretName: {{ include "demeter.agentNatsSecretName" . }}
    optional: true
    items:
      - key: {{ .Values.agent.nats.secretKeys.creds }}
        path: {{ .Values.agent.nats.secretKeys.creds }}
{{- end }}
{{- if .Values.nats.tls.ca.secretName }}
- name: demeter-agent-nats-ca
  secret:
    secretName: {{ .Values.nats.tls.ca.secretName }}
    optional: true
    items:
      - key: {{ .Values.nats.tls.ca.key }}
        path: {{ .Values.nats.tls.ca.key }}
{{- end }}
{{- end }}

{{/*
Pod template fragment for spec.taskManager.podTemplate: labels, the sidecar container and its volumes.
This is the document stored as sidecar.yaml in the <release>-demeter-agent-sidecar ConfigMap. Merge it into a
pod template like a strategic merge patch: metadata.labels as a map, spec.containers and spec.volumes by name.
*/}}
{{- define "demeter.agentPodTemplate" -}}
metadata:
  labels:
    demeter.dev/agent: "true"
    {{- with .Values.agent.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  containers:
    - {{ include "demeter.agentSidecar" . | indent 6 | trim }}
  volumes:
    {{- include "demeter.agentVolumes" . | nindent 4 }}
{{- end }}

{{/* Flink configuration the agent needs: the Prometheus reporter on agent.metricsPort (string values). */}}
{{- define "demeter.agentFlinkConfiguration" -}}
{{- $conf := dict "metrics.reporter.prom.factory.class" "org.apache.flink.metrics.prometheus.PrometheusReporterFactory" "metrics.reporter.prom.port" (toString (int .Values.agent.metricsPort)) -}}
{{- range $k, $v := .Values.agent.flinkConfiguration }}
{{- $_ := set $conf $k (toString $v) }}
{{- end }}
{{- toYaml $conf }}
{{- end }}

{{/*
Helm parses numbers in values as float64, which toToml would print as 30.0 / 1.0e+09. Convert whole floats to
int64 in place (maps recursively, lists one level deep). Call on a deepCopy.
*/}}
{{- define "demeter.intify" -}}
{{- $m := . -}}
{{- range $k, $v := $m }}
{{- if kindIs "float64" $v }}
{{- if eq $v (floor $v) }}{{ $_ := set $m $k (int64 $v) }}{{ end }}
{{- else if kindIs "map" $v }}
{{- include "demeter.intify" $v }}
{{- else if kindIs "slice" $v }}
{{- $l := list }}
{{- range $v }}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}{{ $l = append $l (int64 .) }}
{{- else }}{{ if kindIs "map" . }}{{ include "demeter.intify" . }}{{ end }}{{ $l = append $l . }}{{ end }}
{{- end }}
{{- $_ := set $m $k $l }}
{{- end }}
{{- end }}
{{- end }}
