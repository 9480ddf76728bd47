{{/*
Rules of the coordinator in a namespace it manages, written once and used by the ClusterRole (watchNamespaces
empty) or by each per-namespace Role.
*/}}
{{- define "demeter.rbacRules" -}}
rules:
  # Read opted-in jobs, patch their resources/pod template; create and delete short-lived profiling deployments.
  - apiGroups:
      - flink.apache.org
    resources:
      - flinkdeployments
    verbs:
      - get
      - list
      - watch
      - patch
      - create
      - delete
  - apiGroups:
      - flink.apache.org
    resources:
      - flinkdeployments/status
    verbs:
      - get
  # Explain each decision on the FlinkDeployment.
  - apiGroups:
      - ""
    resources:
      - events
    verbs:
      - create
      - patch
  - apiGroups:
      - events.k8s.io
    resources:
      - events
    verbs:
      - create
      - patch
  # Watch TaskManagers; delete one to inject a failure during a profiling run.
  - apiGroups:
      - ""
    resources:
      - pods
    verbs:
      - get
      - list
      - watch
      - delete
  {{- if .Values.profiling.chaosMesh.enabled }}
  # Network delay during recovery-time profiling.
  - apiGroups:
      - chaos-mesh.org
    resources:
      - networkchaos
    verbs:
      - create
      - delete
      - get
      - list
  {{- end }}
{{- end }}

{{- define "demeter.roleName" -}}
{{- include "demeter.coordinator.fullname" . }}
{{- end }}

{{- define "demeter.leaderElectionRoleName" -}}
{{- printf "%s-leader-election" (include "demeter.coordinator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
