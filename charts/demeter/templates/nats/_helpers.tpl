{{/* NATS subjects and permissions; the nats.conf ConfigMap and the helm test use them. */}}

{{/* Subjects the agent user may publish to: its metrics and heartbeats and the JetStream API of its own stream (info, create, update). */}}
{{- define "demeter.nats.agentPublish" -}}
{{- $l := list }}
{{- range .Values.nats.stream.subjects }}{{ $l = append $l . }}{{ end }}
{{- $l = append $l .Values.nats.heartbeatSubject }}
{{- $l = append $l "$JS.API.INFO" }}
{{- $l = append $l (printf "$JS.API.STREAM.INFO.%s" .Values.nats.stream.name) }}
{{- /* The agent creates or updates its own stream (and only that one) when it is missing. */}}
{{- $l = append $l (printf "$JS.API.STREAM.CREATE.%s" .Values.nats.stream.name) }}
{{- $l = append $l (printf "$JS.API.STREAM.UPDATE.%s" .Values.nats.stream.name) }}
{{- range .Values.nats.agentExtraPublish }}{{ $l = append $l . }}{{ end }}
{{- $l | uniq | toJson }}
{{- end }}

{{/* The agent only receives replies (publish acks) on the default inbox. */}}
{{- define "demeter.nats.agentSubscribe" -}}
{{- list "_INBOX.>" | toJson }}
{{- end }}

{{/* The coordinator manages the stream and its consumers. */}}
{{- define "demeter.nats.coordinatorPublish" -}}
{{- list "$JS.API.>" (printf "$JS.ACK.%s.>" .Values.nats.stream.name) | toJson }}
{{- end }}

{{- define "demeter.nats.coordinatorSubscribe" -}}
{{- $l := list }}
{{- range .Values.nats.stream.subjects }}{{ $l = append $l . }}{{ end }}
{{- $l = append $l .Values.nats.heartbeatSubject }}
{{- $l = append $l "_INBOX.>" }}
{{- if .Values.coordinator.nats.inboxPrefix }}
{{- $l = append $l (printf "%s.>" .Values.coordinator.nats.inboxPrefix) }}
{{- end }}
{{- $l | uniq | toJson }}
{{- end }}

{{/* A JSON array of subjects as a NATS config list (quoted, so `$JS` is not read as a variable). */}}
{{- define "demeter.nats.subjectList" -}}
[{{ range $i, $s := . }}{{ if $i }}, {{ end }}{{ $s | quote }}{{ end }}]
{{- end }}
