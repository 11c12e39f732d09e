{{/* hpo-operator.image: the operator image, repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "hpo-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* hpo-operator.namespace: a namespace value (the first argument), or the release's when it is empty. */}}
{{- define "hpo-operator.namespace" -}}
{{- default (index . 1).Release.Namespace (index . 0) -}}
{{- end -}}

{{/*
hpo-operator.monitoring: "true" when a monitoring.coreos.com/v1 object of the given kind is to be
rendered, else "". Arguments: (list <enabled value> <root context> <kind>). `enabled` is true,
false, or "auto": created exactly when the cluster serves monitoring.coreos.com/v1/<kind> (helm
template: --api-versions monitoring.coreos.com/v1/<kind>). Never without metrics to scrape.
*/}}
{{- define "hpo-operator.monitoring" -}}
{{- $enabled := index . 0 -}}
{{- $root := index . 1 -}}
{{- $kind := index . 2 -}}
{{- if $root.Values.metrics.enabled -}}
{{- if kindIs "bool" $enabled -}}
{{- if $enabled -}}true{{- end -}}
{{- else if eq (toString $enabled) "auto" -}}
{{- if $root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind) -}}true{{- end -}}
{{- else -}}
{{- fail (printf "%s enabled must be true, false or \"auto\", not %v" $kind $enabled) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* hpo-operator.dashboardName: the dashboard ConfigMap's name, <fullname>-dashboard within 63 characters. */}}
{{- define "hpo-operator.dashboardName" -}}
{{- printf "%s-dashboard" (include "hpo-operator.fullname" . | trunc 53 | trimSuffix "-") -}}
{{- end -}}

{{/* hpo-operator.alertLabels: the labels of one alert: its severity plus prometheusRule.alertLabels. Arguments: (list <severity> <root context>). */}}
{{- define "hpo-operator.alertLabels" -}}
{{- $labels := merge (dict "severity" (index . 0)) (deepCopy (index . 1).Values.prometheusRule.alertLabels) -}}
{{- toYaml $labels -}}
{{- end -}}

{{/*
hpo-operator.validate: `fail` with a message naming the keys when values contradict each other.
Rendered (empty) at the top of the Deployment, so every install and template checks it.
*/}}
{{- define "hpo-operator.validate" -}}
{{- $v := .Values -}}
{{- if not $v.metrics.enabled -}}
{{- if eq (toString $v.serviceMonitor.enabled) "true" -}}
{{- fail "serviceMonitor.enabled=true needs metrics.enabled=true: there is nothing to scrape" -}}
{{- end -}}
{{- if eq (toString $v.prometheusRule.enabled) "true" -}}
{{- fail "prometheusRule.enabled=true needs metrics.enabled=true: the alerts are built on the operator's metrics" -}}
{{- end -}}
{{- if $v.grafanaDashboard.enabled -}}
{{- fail "grafanaDashboard.enabled=true needs metrics.enabled=true: the dashboard shows the operator's metrics" -}}
{{- end -}}
{{- end -}}
{{- if and $v.metrics.enabled $v.livenessProbe.enabled (eq (int $v.metrics.port) (int $v.livenessProbe.port)) -}}
{{- fail (printf "metrics.port and livenessProbe.port are both %v: give them different ports" $v.metrics.port) -}}
{{- end -}}
{{- if $v.trialRbac.create -}}
{{- if not $v.trialRbac.namespaces -}}
{{- fail "trialRbac.create=true needs trialRbac.namespaces: the namespaces whose studies use it" -}}
{{- end -}}
{{- if $v.watchNamespaces -}}
{{- range $v.trialRbac.namespaces -}}
{{- if not (has . $v.watchNamespaces) -}}
{{- fail (printf "trialRbac.namespaces lists %s, which is not in watchNamespaces %v: the operator would not run studies there" . $v.watchNamespaces) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (gt (int $v.replicaCount) 1) (not $v.leaderElection.enabled) -}}
{{- fail (printf "replicaCount=%v needs leaderElection.enabled=true: replicas without it reconcile the same studies at once" $v.replicaCount) -}}
{{- end -}}
{{- $selector := include "hpo-operator.selectorLabels" . | fromYaml -}}
{{- range $key, $_ := $v.podLabels -}}
{{- if hasKey $selector $key -}}
{{- fail (printf "podLabels may not set %s: it is one of the operator pod's selector labels" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
