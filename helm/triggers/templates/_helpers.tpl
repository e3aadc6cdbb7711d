{{/* Names ------------------------------------------------------------------ */}}
{{- define "triggers.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "triggers.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "triggers.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "triggers.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: triggers
{{- end -}}

{{/* Labels of one component; call with (dict "root" $ "component" "gateway"). */}}
{{- define "triggers.componentLabels" -}}
{{ include "triggers.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "triggers.selectorLabels" -}}
app.kubernetes.io/name: {{ include "triggers.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The services that run as Deployments (JSON list): the registry when enabled. */}}
{{- define "triggers.components" -}}
{{- $components := list "gateway" "router" "persister" "deliverer" -}}
{{- if .Values.registry.enabled }}{{ $components = append $components "registry" }}{{ end -}}
{{- toJson $components -}}
{{- end -}}

{{- define "triggers.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "triggers.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "triggers.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "triggers.secretName" -}}
{{- default (printf "%s-secrets" (include "triggers.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{/* The schema registry's URL: the bundled one, or the managed one. */}}
{{- define "triggers.registryUrl" -}}
{{- if .Values.registry.enabled -}}
{{- printf "http://%s-registry:%v" (include "triggers.fullname" .) .Values.registry.port -}}
{{- else -}}
{{- required "schemaRegistry.url is required unless registry.enabled" .Values.schemaRegistry.url -}}
{{- end -}}
{{- end -}}

{{/* librdkafka settings of the chosen MSK authentication (kafka.extra). */}}
{{- define "triggers.kafkaAuthExtra" -}}
{{- $auth := .Values.kafka.auth -}}
{{- if eq $auth.mode "tls" -}}
security.protocol: SSL
{{- else if eq $auth.mode "scram" -}}
security.protocol: SASL_SSL
sasl.mechanism: SCRAM-SHA-512
sasl.username: {{ required "kafka.auth.scram.username is required for SCRAM" $auth.scram.username | quote }}
{{- end -}}
{{- end -}}

{{/* config.toml: derived from the values, then `config` over it. */}}
{{- define "triggers.config" -}}
{{- range $key := list "enable.idempotence" "acks" "enable.auto.offset.store" "enable.auto.commit" "group.id" "group.instance.id" "bootstrap.servers" "message.max.bytes" -}}
{{- if hasKey $.Values.kafka.extra $key -}}
{{- fail (printf "kafka.extra.%s is reserved: the services' delivery guarantees depend on it" $key) -}}
{{- end -}}
{{- end -}}
{{- $extra := merge (dict) (include "triggers.kafkaAuthExtra" . | fromYaml) .Values.kafka.extra -}}
{{- $kafka := dict "bootstrap_servers" (required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers) "extra" $extra -}}
{{- if eq .Values.kafka.auth.mode "iam" -}}
{{- $_ := set $kafka "msk_iam" (dict "region" (required "kafka.auth.iam.region is required for IAM" .Values.kafka.auth.iam.region)) -}}
{{- end -}}
{{- $dynamodb := dict "region" .Values.dynamodb.region "table_prefix" .Values.dynamodb.tablePrefix "lean_client" .Values.dynamodb.leanClient -}}
{{- with .Values.dynamodb.endpoint }}{{ $_ := set $dynamodb "endpoint" . }}{{ end -}}
{{- $registry := dict "url" (include "triggers.registryUrl" .) -}}
{{- with .Values.schemaRegistry.username }}{{ $_ := set $registry "username" . }}{{ end -}}
{{- $telemetry := dict "log_level" .Values.telemetry.logLevel "log_format" .Values.telemetry.logFormat "trace_sample_ratio" .Values.telemetry.traceSampleRatio -}}
{{- with .Values.telemetry.otlpEndpoint }}{{ $_ := set $telemetry "otlp_endpoint" . }}{{ end -}}
{{- $topics := dict "namespace" .Values.topics.namespace "partitions" (int .Values.topics.partitions) "replication_factor" (int .Values.topics.replicationFactor) "min_insync_replicas" (int .Values.topics.minInsyncReplicas) -}}
{{- $gateway := dict "listen" (printf "0.0.0.0:%v" .Values.gateway.port) "workers" (int .Values.gateway.workers) "rate_limit_replicas" (int .Values.gateway.autoscaling.minReplicas) "trust_forwarded_for" .Values.gateway.ingress.enabled -}}
{{- $router := dict "listen" (printf "0.0.0.0:%v" .Values.router.port) "shutdown_grace" .Values.router.shutdownGrace -}}
{{- $persister := dict "listen" (printf "0.0.0.0:%v" .Values.persister.port) "shutdown_grace" .Values.persister.shutdownGrace -}}
{{- $deliverer := dict "listen" (printf "0.0.0.0:%v" .Values.deliverer.port) "shutdown_grace" .Values.deliverer.shutdownGrace -}}
{{- $runtime := dict "worker_threads" (int .Values.runtime.workerThreads) -}}
{{- $config := dict "kafka" $kafka "topics" $topics "dynamodb" $dynamodb "schema_registry" $registry "telemetry" $telemetry "runtime" $runtime "gateway" $gateway "router" $router "persister" $persister "deliverer" $deliverer -}}
{{- if .Values.registry.enabled -}}
{{- $_ := set $config "registry_server" (dict "listen" (printf "0.0.0.0:%v" .Values.registry.port)) -}}
{{- end -}}
{{- $overrides := dict -}}
{{- include "triggers.integral" (dict "src" .Values.config "dst" $overrides) -}}
{{- mustMergeOverwrite $config $overrides | toToml -}}
{{- end -}}

{{/*
Copies `src` into `dst` with YAML's whole numbers as integers: Helm reads
every number as a float, which toToml would write as 200.0 where the
services expect an integer. Recursive; writes into `dst` (a template can
only return text, and text would turn the numbers back into floats).
*/}}
{{- define "triggers.integral" -}}
{{- $dst := .dst -}}
{{- range $key, $value := .src -}}
{{- if kindIs "map" $value -}}
{{- $inner := dict -}}
{{- include "triggers.integral" (dict "src" $value "dst" $inner) -}}
{{- $_ := set $dst $key $inner -}}
{{- else if and (kindIs "float64" $value) (eq (float64 (int64 $value)) $value) -}}
{{- $_ := set $dst $key (int64 $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment of every service: the config file and the secrets. */}}
{{- define "triggers.env" -}}
- name: TRIGGERS_CONFIG
  value: /etc/triggers/config.toml
- name: TRIGGERS_GATEWAY__ADMIN_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ include "triggers.secretName" . }}, key: admin-token, optional: true}
- name: TRIGGERS_GATEWAY__JWT_SECRET
  valueFrom:
    secretKeyRef: {name: {{ include "triggers.secretName" . }}, key: jwt-secret, optional: true}
- name: TRIGGERS_GATEWAY__JWT_PREVIOUS_SECRETS
  valueFrom:
    secretKeyRef: {name: {{ include "triggers.secretName" . }}, key: jwt-previous-secrets, optional: true}
{{- if .Values.kafka.staticMembership }}
# Static group membership: a crashed container restarts in the same pod, under
# the same name, and takes its partitions back without a group rebalance.
- name: TRIGGERS_KAFKA__GROUP_INSTANCE_ID
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
{{- end }}
{{- if eq .Values.kafka.auth.mode "scram" }}
- name: TRIGGERS_KAFKA__EXTRA__sasl.password
  valueFrom:
    secretKeyRef:
      name: {{ default (include "triggers.secretName" .) .Values.kafka.auth.scram.existingSecret }}
      key: {{ .Values.kafka.auth.scram.passwordKey }}
{{- end }}
{{- if .Values.schemaRegistry.username }}
- name: TRIGGERS_SCHEMA_REGISTRY__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "triggers.secretName" .) .Values.schemaRegistry.existingSecret }}
      key: {{ .Values.schemaRegistry.passwordKey }}
{{- end }}
{{- if eq .Values.kafka.auth.mode "iam" }}
- name: AWS_REGION
  value: {{ .Values.kafka.auth.iam.region | quote }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every workload. */}}
{{- define "triggers.podCommon" -}}
serviceAccountName: {{ include "triggers.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Zone and node spread of one component. */}}
{{- define "triggers.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  {{- range list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
  - maxSkew: {{ $.root.Values.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $.root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "triggers.selectorLabels" $ | nindent 8 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Seconds of a Go/humantime duration such as "20s", "1m" or "1m30s". */}}
{{- define "triggers.seconds" -}}
{{- $d := . | toString -}}
{{- $total := 0 -}}
{{- range $part := regexFindAll "[0-9]+(ms|h|m|s)" $d -1 -}}
{{- $n := regexFind "[0-9]+" $part | int -}}
{{- if hasSuffix "ms" $part -}}{{- else if hasSuffix "h" $part -}}{{- $total = add $total (mul $n 3600) -}}{{- else if hasSuffix "m" $part -}}{{- $total = add $total (mul $n 60) -}}{{- else -}}{{- $total = add $total $n -}}{{- end -}}
{{- end -}}
{{- $total -}}
{{- end -}}
