{{/* Names and labels. */}}
{{- define "otlp-meter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "otlp-meter.fullname" -}}
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

{{/* Cluster-scoped objects (ClusterRole, ClusterRoleBinding): the release's namespace in the name, so
     the same release name in two namespaces does not claim (or overwrite) one object. */}}
{{- define "otlp-meter.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "otlp-meter.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "otlp-meter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otlp-meter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ ternary "collector" "gateway" (eq .Values.mode "daemonset") }}
{{- end -}}

{{- define "otlp-meter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "otlp-meter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "otlp-meter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "otlp-meter.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "otlp-meter.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding the OpenMeter token, if any. */}}
{{- define "otlp-meter.tokenSecretName" -}}
{{- if .Values.openmeter.existingSecret -}}
{{- .Values.openmeter.existingSecret -}}
{{- else if .Values.openmeter.token -}}
{{- printf "%s-openmeter" (include "otlp-meter.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "otlp-meter.tokenSecretKey" -}}
{{- if .Values.openmeter.existingSecret -}}{{ .Values.openmeter.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{/* Rule files: ConfigMap key -> path relative to the config file. */}}
{{- define "otlp-meter.ruleFileKey" -}}
{{- printf "rules-%s" . -}}
{{- end -}}

{{/*
Refuse combinations that would lose or double-count data, or that cannot start.
*/}}
{{- define "otlp-meter.validate" -}}
{{- if not (has .Values.mode (list "daemonset" "deployment")) -}}
{{- fail "mode must be daemonset or deployment" -}}
{{- end -}}
{{- if not (has .Values.storage.type (list "hostPath" "pvc" "emptyDir")) -}}
{{- fail "storage.type must be hostPath, pvc or emptyDir" -}}
{{- end -}}
{{- if and (eq .Values.mode "daemonset") (eq .Values.storage.type "pvc") -}}
{{- fail "storage.type pvc needs mode deployment: in daemonset mode every pod would share one claim (use hostPath)" -}}
{{- end -}}
{{- if and (eq .Values.mode "deployment") (eq .Values.storage.type "hostPath") -}}
{{- fail "mode deployment needs storage.type pvc (or emptyDir for testing): on hostPath a gateway's queue, acknowledged events included, stays behind on the node when the pod is rescheduled (also set tolerations: [])" -}}
{{- end -}}
{{- if and (eq .Values.mode "deployment") (gt (int .Values.replicaCount) 1) (ne .Values.storage.type "emptyDir") -}}
{{- fail "replicaCount > 1 needs storage.type emptyDir: a queue directory is never shared by two processes" -}}
{{- end -}}
{{- if not (or .Values.openmeter.url .Values.openmeter.token .Values.openmeter.existingSecret) -}}
{{- fail "set openmeter.token, openmeter.existingSecret or openmeter.url: otherwise events would only be written to a file on the node" -}}
{{- end -}}
{{- if not (hasPrefix "/" .Values.storage.mountPath) -}}
{{- fail "storage.mountPath must be an absolute path" -}}
{{- end -}}
{{- end -}}

{{/*
The otlp-meter config: .Values.config with the chart-owned keys on top, so the queue directory always equals
the volume's mountPath, the receivers' ports equal the container and Service ports, and the telemetry port
equals the probes' port.

Presets:
- otlp, eventsApi: receivers.otlp.{grpc,http} and receivers.events_api are enabled exactly when their preset
  is (the workload opens their ports under the same condition). Always written, because otlp-meter's own
  default is enabled: a disabled preset must not leave a server listening on a port nobody exposed.
- kubernetes: sources.kubernetes (node-local in daemonset mode, cluster_wide in deployment mode) with
  defaults under what .Values.sources.kubernetes sets, and the `kubernetes` rule pack that turns its points
  into kube-pod events.
*/}}
{{- define "otlp-meter.config" -}}
{{- $daemonset := eq .Values.mode "daemonset" -}}
{{- $otlp := .Values.presets.otlp.enabled -}}
{{- $events := .Values.presets.eventsApi.enabled -}}
{{- $kubernetes := .Values.presets.kubernetes.enabled -}}
{{- $ruleFiles := list -}}
{{- range $name, $_ := .Values.rules.files -}}
{{- $ruleFiles = append $ruleFiles (printf "rules/%s" $name) -}}
{{- end -}}
{{- $packs := .Values.rules.packs | default list -}}
{{- $sources := deepCopy (.Values.sources | default dict) -}}
{{- if and $kubernetes (not (has "kubernetes" $packs)) -}}
{{- $packs = append $packs "kubernetes" -}}
{{- end -}}
{{- $owned := dict
  "receivers" (dict
    "otlp" (dict
      "grpc" (dict "enabled" $otlp "endpoint" (printf "0.0.0.0:%d" (int .Values.ports.otlpGrpc)))
      "http" (dict "enabled" $otlp "endpoint" (printf "0.0.0.0:%d" (int .Values.ports.otlpHttp))))
    "events_api" (dict "enabled" $events "endpoint" (printf "0.0.0.0:%d" (int .Values.ports.eventsApi))))
  "rules" (dict "packs" $packs "files" $ruleFiles "inline" .Values.rules.inline)
  "queue" (dict "directory" .Values.storage.mountPath "max_bytes" .Values.queue.maxBytes)
  "telemetry" (dict "endpoint" (printf "0.0.0.0:%d" (int .Values.ports.telemetry)))
  "service" (dict "shutdown_timeout" (printf "%ds" (int .Values.shutdownTimeoutSeconds)))
-}}
{{- if $sources -}}
{{- $_ := set $owned "sources" $sources -}}
{{- end -}}
{{- $config := mergeOverwrite (deepCopy (.Values.config | default dict)) $owned -}}
{{- /* mergeOverwrite never overwrites with false: set the switches after merging. */ -}}
{{- $_ := set $config.receivers.otlp.grpc "enabled" $otlp -}}
{{- $_ := set $config.receivers.otlp.http "enabled" $otlp -}}
{{- $_ := set $config.receivers.events_api "enabled" $events -}}
{{- $configSources := get $config "sources" | default dict -}}
{{- $kube := index $configSources "kubernetes" -}}
{{- if $kubernetes -}}
{{- $kube = $kube | default dict -}}
{{- if and (hasKey $kube "cluster_wide") (ne (toString $kube.cluster_wide) (toString (not $daemonset))) -}}
{{- if $daemonset -}}
{{- fail "sources.kubernetes.cluster_wide: true in daemonset mode would bill every pod once per node (it is node-local there); use mode deployment for one cluster-wide collector" -}}
{{- else -}}
{{- fail "sources.kubernetes.cluster_wide: false in deployment mode would meter only the node the gateway runs on; leave it unset (the chart sets true)" -}}
{{- end -}}
{{- end -}}
{{- if and (not $daemonset) (gt (int .Values.replicaCount) 1) -}}
{{- fail "presets.kubernetes in deployment mode needs replicaCount 1: every replica would bill every pod of the cluster" -}}
{{- end -}}
{{- $defaults := dict "interval" "60s" "cluster_wide" (not $daemonset) -}}
{{- if not (hasKey $kube "namespaces") -}}
{{- $_ := set $defaults "exclude_namespaces" (list "kube-system") -}}
{{- end -}}
{{- $_ := set $configSources "kubernetes" (merge $kube $defaults) -}}
{{- $_ := set $config "sources" $configSources -}}
{{- else if and (hasKey $configSources "kubernetes") (not (kindIs "invalid" $kube)) -}}{{- /* kubernetes: {} is the source with its defaults */ -}}
{{- fail "sources.kubernetes needs presets.kubernetes.enabled: the preset grants the source its RBAC and node-local settings" -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
"true" when the config serves telemetry (/healthz, /readyz, /metrics) over TLS: the probes then use HTTPS.
*/}}
{{- define "otlp-meter.telemetryTls" -}}
{{- $config := .Values.config | default dict -}}
{{- $telemetry := get $config "telemetry" | default dict -}}
{{- $tls := get $telemetry "tls" | default dict -}}
{{- if get $tls "cert_file" -}}true{{- end -}}
{{- end -}}
