{{/* hpo-operator.name: the chart's name, or nameOverride. */}}
{{- define "hpo-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* hpo-operator.fullname: the objects' name, <release>-<name> unless the release already holds it. */}}
{{- define "hpo-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* hpo-operator.selectorLabels: the labels that select the operator's pods; never change across upgrades. */}}
{{- define "hpo-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hpo-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* hpo-operator.labels: every object's labels: the selector labels plus version and chart. */}}
{{- define "hpo-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "hpo-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* hpo-operator.serviceAccountName: the ServiceAccount the operator runs as. */}}
{{- define "hpo-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hpo-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The leader Lease's name, and the name of the Role and RoleBinding that let the operator hold it.
*/}}
{{- define "hpo-operator.leaseName" -}}
{{- default (include "hpo-operator.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- define "hpo-operator.leaderElectionName" -}}
{{- printf "%s-leader-election" (include "hpo-operator.fullname" . | trunc 46 | trimSuffix "-") -}}
{{- end -}}

{{/*
The operator's --allow-* arguments from trialPolicy (and trialRbac's shared account), one per line.
*/}}
{{- define "hpo-operator.trialPolicyArgs" -}}
{{- $policy := .Values.trialPolicy | default dict }}
{{- range $policy.allowedServiceAccounts }}
- {{ printf "--allow-service-account=%s/%s" .namespace .name | quote }}
{{- end }}
{{- if .Values.trialRbac.create }}
{{- range .Values.trialRbac.namespaces }}
- {{ printf "--allow-service-account=%s/%s" . $.Values.trialRbac.serviceAccountName | quote }}
{{- end }}
{{- end }}
{{- range $key, $setting := dict "allowHostNamespaces" "hostNamespaces" "allowPrivileged" "privileged" "allowHostPath" "hostPath" "allowHostPorts" "hostPorts" "allowUnconfined" "unconfined" }}
{{- if index $policy $key }}
- {{ printf "--allow-trial-setting=%s" $setting | quote }}
{{- end }}
{{- end }}
{{- range $policy.allowedCapabilities }}
- {{ printf "--allow-capability=%s" . | quote }}
{{- end }}
{{- end }}

{{/*
hpo-operator.flowcontrolVersion: the flowcontrol.apiserver.k8s.io version for the cluster's
Kubernetes (v1beta1 from 1.20, v1beta2 from 1.23, v1beta3 from 1.26, v1 from 1.29), or "" when the
cluster does not serve it (API Priority and Fairness turned off).
*/}}
{{- define "hpo-operator.flowcontrolVersion" -}}
{{- $kube := .Capabilities.KubeVersion.Version -}}
{{- $version := "v1beta1" -}}
{{- if semverCompare ">=1.29-0" $kube -}}
{{- $version = "v1" -}}
{{- else if semverCompare ">=1.26-0" $kube -}}
{{- $version = "v1beta3" -}}
{{- else if semverCompare ">=1.23-0" $kube -}}
{{- $version = "v1beta2" -}}
{{- end -}}
{{- if .Capabilities.APIVersions.Has (printf "flowcontrol.apiserver.k8s.io/%s" $version) -}}
{{- $version -}}
{{- end -}}
{{- end -}}
