{{/* Name of the chart, overridable. */}}
{{- define "mobackup.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it already contains the chart name. */}}
{{- define "mobackup.fullname" -}}
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

{{- define "mobackup.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mobackup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mobackup.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "mobackup.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mo-backup-operator
{{- end }}

{{- define "mobackup.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mobackup.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mobackup.jobServiceAccountName" -}}
{{- default (printf "%s-job" (include "mobackup.fullname" .)) .Values.jobServiceAccount.name }}
{{- end }}

{{/* Namespaces that get the Job pods' ServiceAccount and Role, as a JSON list. */}}
{{- define "mobackup.jobNamespaces" -}}
{{- if .Values.jobServiceAccount.namespaces }}
{{- .Values.jobServiceAccount.namespaces | uniq | toJson }}
{{- else if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest. */}}
{{- define "mobackup.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "mobackup.agentImage" -}}
{{- if not .Values.agentImage.repository }}
{{- include "mobackup.image" . }}
{{- else if .Values.agentImage.digest }}
{{- printf "%s@%s" .Values.agentImage.repository .Values.agentImage.digest }}
{{- else }}
{{- printf "%s:%s" .Values.agentImage.repository (default .Chart.AppVersion .Values.agentImage.tag) }}
{{- end }}
{{- end }}

{{/* The operator's rules on namespaced resources (ClusterRole, or a Role per watched namespace).
Only what the code calls: schedules create and prune MOBackups and MORestoreDrills; kopf's and the workload finalizer
are patches; status is patched, never replaced. Workloads only through /scale (patching a
StatefulSet or Deployment could rewrite its pod template); the replicas to restore live in the
run's status. finalizers/update: Jobs, clone PVCs and VolumeSnapshots set blockOwnerDeletion. */}}
{{- define "mobackup.namespacedRules" -}}
- apiGroups: [mobackup.io]
  resources: [mobackups]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [mobackup.io]
  resources: [morestores]
  verbs: [get, list, watch, patch]
- apiGroups: [mobackup.io]
  resources: [morestoredrills]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [mobackup.io]
  resources: [mobackupstorages, mobackupschedules]
  verbs: [get, list, watch]
- apiGroups: [mobackup.io]
  resources: [mobackupstorages/status, mobackups/status, morestores/status, mobackupschedules/status,
              morestoredrills/status]
  verbs: [get, patch]
- apiGroups: [mobackup.io]
  resources: [mobackups/finalizers, morestores/finalizers, morestoredrills/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
- apiGroups: [apps]
  resources: [statefulsets/scale, deployments/scale]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [secrets, configmaps]
  verbs: [get]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, create, delete]
- apiGroups: [snapshot.storage.k8s.io]
  resources: [volumesnapshots]
  verbs: [get, create, delete]
# Read only: a MOBackup/MORestore of a MatrixOneCluster (the MatrixOne operator's) takes its S3 location
# and SQL endpoint from it; stopping it stays with whoever runs that cluster.
- apiGroups: [core.matrixorigin.io]
  resources: [matrixoneclusters]
  verbs: [get]
{{- if gt (int .Values.replicaCount) 1 }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end }}
