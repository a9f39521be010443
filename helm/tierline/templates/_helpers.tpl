{{/* Names and labels. */}}
{{- define "tierline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Kept short: KubeRay derives pod and Service names from the RayService name. */}}
{{- define "tierline.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tierline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tierline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tierline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tierline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tierline
{{- end -}}

{{- define "tierline.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The spec as YAML: the values' `spec`, or the example spec when it is empty. */}}
{{- define "tierline.specYaml" -}}
{{- if .Values.spec -}}
{{- toYaml .Values.spec -}}
{{- else -}}
{{- .Files.Get "files/example-spec.yaml" -}}
{{- end -}}
{{- end -}}

{{/* The Serve proxy's port: the spec's gateway.port (the spec's default when unset). */}}
{{- define "tierline.servePort" -}}
{{- dig "gateway" "port" 8000 (include "tierline.specYaml" . | fromYaml) | int -}}
{{- end -}}

{{/*
The Serve config, built from the spec as cluster/render.py's serve_config builds it
(tests/k8s proves the two agree).
*/}}
{{- define "tierline.serveConfig" -}}
{{- $spec := include "tierline.specYaml" . | fromYaml -}}
{{- /* The one setting the chart adds: the shared Responses store (tierline.responsesStoreUri). */ -}}
{{- $gw := dig "gateway" dict $spec -}}
{{- $responses := dig "responses" dict $gw -}}
{{- $_ := set $responses "store_uri" (include "tierline.responsesStoreUri" .) -}}
{{- $_ = set $gw "responses" $responses -}}
{{- $_ = set $spec "gateway" $gw -}}
{{- $host := dig "gateway" "host" "" $spec -}}
{{- if not (has $host (list "0.0.0.0" "::")) -}}
{{- fail (printf "spec.gateway.host is %q: on Kubernetes the Serve proxy must bind 0.0.0.0 (or ::) so the gateway Service can reach it" $host) -}}
{{- end -}}
{{- /* The gateway replicas serve the spec's port themselves (direct ingress, one per pod:
tierline.rayProcessEnv); Serve's proxy, which carries no traffic, takes the next port. */ -}}
{{- $http := dict "host" $host "port" (add1 (include "tierline.servePort" . | int)) -}}
{{- /* JSON log lines with request ids, as tierline.cluster.render.serve_config (its SERVE_LOGGING) */ -}}
{{- $logging := dict "encoding" "JSON" "log_level" "INFO" -}}
{{- $gateway := dict "name" "gateway" "max_replicas_per_node" 1 -}}
{{- $app := dict "name" (default "tierline" $spec.name) "route_prefix" "/" "import_path" "tierline.deployments.app:build_app" "args" (dict "spec" $spec) "logging_config" $logging "deployments" (list $gateway) -}}
{{- toYaml (dict "proxy_location" "HeadOnly" "http_options" $http "applications" (list $app)) -}}
{{- end -}}

{{/* Checks across values that a JSON schema cannot express. */}}
{{- define "tierline.checks" -}}
{{- $spec := include "tierline.specYaml" . | fromYaml -}}
{{- $auth := dig "gateway" "auth" "enabled" true $spec -}}
{{- if and $auth (not .Values.apiKeys.existingSecret) -}}
{{- fail "spec.gateway.auth.enabled is true: set apiKeys.existingSecret to the Secret holding the API keys (keys never come from values)" -}}
{{- end -}}
{{- $keysFile := dig "gateway" "auth" "keys_file" "" $spec | default "" -}}
{{- if and $keysFile (not (hasPrefix (printf "%s/" .Values.apiKeys.mountPath) $keysFile)) -}}
{{- fail (printf "spec.gateway.auth.keys_file %q is not inside apiKeys.mountPath %q, where the Secret is mounted" $keysFile .Values.apiKeys.mountPath) -}}
{{- end -}}
{{- $groups := list -}}
{{- range .Values.workerGroups -}}
{{- if has .name $groups -}}
{{- fail (printf "workerGroups: the name %q is used twice" .name) -}}
{{- end -}}
{{- $groups = append $groups .name -}}
{{- if gt (int .minReplicas) (int .maxReplicas) -}}
{{- fail (printf "workerGroups[%s]: minReplicas %v is above maxReplicas %v" .name .minReplicas .maxReplicas) -}}
{{- end -}}
{{- end -}}
{{- $shapes := list -}}
{{- range .Values.workerGroups -}}{{- $shapes = append $shapes (.acceleratorType | default "") -}}{{- end -}}
{{- range $i, $tier := $spec.tiers -}}
{{- if not (has ($tier.accelerator_type | default "") $shapes) -}}
{{- fail (printf "spec.tiers[%d] (%s) needs accelerator_type %q but no workerGroups entry has that acceleratorType" $i $tier.name ($tier.accelerator_type | default "none: CPU")) -}}
{{- end -}}
{{- end -}}
{{- if include "tierline.ragEnabled" . -}}
{{- if dig "rag" "token" "" $spec -}}
{{- fail "spec.rag.token is set: the spec is stored in the RayService for anyone who can read it; put the Milvus token in a Secret and name it in rag.tokenSecret" -}}
{{- end -}}
{{- $uri := include "tierline.ragUri" . -}}
{{- if and (include "tierline.milvusLite" .) (not (hasPrefix (printf "%s/" .Values.rag.persistence.mountPath) $uri)) -}}
{{- fail (printf "spec.rag.uri %q: Milvus Lite's data must be on the PVC, so the path must lie inside rag.persistence.mountPath %q (e.g. %s/milvus.db), or give a Milvus server URI" $uri .Values.rag.persistence.mountPath .Values.rag.persistence.mountPath) -}}
{{- end -}}
{{- end -}}
{{- if and (not (include "tierline.responsesPostgres" .)) (not .Values.responses.allowPodLocalStore) -}}
{{- fail (printf "spec.gateway.responses.store_uri %q is a SQLite file, one per gateway pod: a stored response would be found only on the pod that stored it, and lost with it. Use a PostgreSQL server (responses.postgresql.uri, or a postgresql:// store_uri), or set responses.allowPodLocalStore" (include "tierline.responsesStoreUri" .)) -}}
{{- end -}}
{{- if eq .Values.upgradeStrategy.type "NewClusterWithIncrementalUpgrade" -}}
{{- if not .Values.upgradeStrategy.clusterUpgradeOptions.gatewayClassName -}}
{{- fail "upgradeStrategy.type NewClusterWithIncrementalUpgrade needs upgradeStrategy.clusterUpgradeOptions (gatewayClassName, stepSizePercent, intervalSeconds)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tierline.ragEnabled" -}}
{{- if dig "rag" "enabled" false (include "tierline.specYaml" . | fromYaml) -}}true{{- end -}}
{{- end -}}

{{/* spec.rag.uri, or the spec's default when unset. */}}
{{- define "tierline.ragUri" -}}
{{- dig "rag" "uri" ".tierline/rag/milvus.db" (include "tierline.specYaml" . | fromYaml) -}}
{{- end -}}

{{/* An external Milvus server: spec.rag.uri is a URL. */}}
{{- define "tierline.milvusExternal" -}}
{{- if and (include "tierline.ragEnabled" .) (regexMatch "^[a-z]+://" (include "tierline.ragUri" .)) -}}true{{- end -}}
{{- end -}}

{{/* Embedded Milvus Lite: RAG on, spec.rag.uri a path (on the head's PVC). */}}
{{- define "tierline.milvusLite" -}}
{{- if and (include "tierline.ragEnabled" .) (not (include "tierline.milvusExternal" .)) -}}true{{- end -}}
{{- end -}}

{{/* The external Milvus server's port (19530 unless the URI names one). */}}
{{- define "tierline.milvusPort" -}}
{{- $host := (urlParse (include "tierline.ragUri" .)).host -}}
{{- regexFind "[0-9]+$" (regexFind ":[0-9]+$" $host) | default "19530" -}}
{{- end -}}

{{/* The Responses store: the spec's store_uri, else the chart's PostgreSQL server. */}}
{{- define "tierline.responsesStoreUri" -}}
{{- $spec := include "tierline.specYaml" . | fromYaml -}}
{{- dig "gateway" "responses" "store_uri" "" $spec | default .Values.responses.postgresql.uri -}}
{{- end -}}

{{- define "tierline.responsesPostgres" -}}
{{- if regexMatch "^postgres(ql)?://" (include "tierline.responsesStoreUri" .) -}}true{{- end -}}
{{- end -}}

{{/* The PostgreSQL server's port (5432 unless the URI names one). */}}
{{- define "tierline.responsesPort" -}}
{{- $host := (urlParse (include "tierline.responsesStoreUri" .)).host -}}
{{- regexFind "[0-9]+$" (regexFind ":[0-9]+$" $host) | default "5432" -}}
{{- end -}}

{{/* Environment of every Ray container. */}}
{{- define "tierline.env" -}}
- name: RAY_TMPDIR
  value: /tmp/ray
{{ include "tierline.rayProcessEnv" . }}
- name: HF_HOME
  value: /var/cache/tierline/huggingface
{{- if .Values.apiKeys.existingSecret }}
- name: {{ dig "gateway" "auth" "env_var" "TIERLINE_API_KEY" (include "tierline.specYaml" . | fromYaml) }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.apiKeys.existingSecret }}
      key: {{ .Values.apiKeys.envKey }}
      optional: true
{{- end }}
{{- if include "tierline.milvusLite" . }}
# The Ray resource only the head (holding Milvus Lite's volume) has: the RAG store
# replica must ask for it.
- name: TIERLINE_RAG_STORE_RESOURCE
  value: tierline_rag_store
{{- end }}
{{- if and (include "tierline.responsesPostgres" .) .Values.responses.postgresql.passwordSecret.name }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.responses.postgresql.passwordSecret.name }}
      key: {{ .Values.responses.postgresql.passwordSecret.key }}
{{- end }}
{{- if and (include "tierline.ragEnabled" .) .Values.rag.tokenSecret.name }}
- name: TIERLINE_MILVUS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.rag.tokenSecret.name }}
      key: {{ .Values.rag.tokenSecret.key }}
{{- end }}
{{- end -}}

{{/*
The request path's settings that Ray reads from its processes' environment, on every pod
(tierline.cluster.render.ray_process_env; tests/k8s proves the two agree): the gateway
replica of each pod serves the spec's port itself (Ray Serve direct ingress), and Serve's
handles talk gRPC.
*/}}
{{- define "tierline.rayProcessEnv" -}}
{{- $port := include "tierline.servePort" . | int -}}
- name: RAY_SERVE_ENABLE_DIRECT_INGRESS
  value: "1"
- name: RAY_SERVE_USE_GRPC_BY_DEFAULT
  value: "1"
- name: RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP
  value: "0"
- name: RAY_SERVE_LOG_TO_STDERR
  value: "0"
- name: RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT
  value: {{ $port | quote }}
- name: RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT
  value: {{ add1 $port | quote }}
{{- end -}}

{{/* Volumes of every Ray pod; `shm` is the /dev/shm size in GiB. */}}
{{- define "tierline.volumes" -}}
- name: ray-tmp
  emptyDir:
    sizeLimit: {{ printf "%dGi" (int .root.Values.rayTmpSizeGi) }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ printf "%dGi" (int .shm) }}
- name: model-cache
{{- if .root.Values.modelCache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .root.Values.modelCache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ printf "%dGi" (int .root.Values.modelCache.sizeGi) }}
{{- end }}
{{- if .root.Values.apiKeys.existingSecret }}
- name: api-keys
  secret:
    secretName: {{ .root.Values.apiKeys.existingSecret }}
    optional: true
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "tierline.volumeMounts" -}}
- name: ray-tmp
  mountPath: /tmp/ray
- name: dshm
  mountPath: /dev/shm
- name: model-cache
  mountPath: /var/cache/tierline
{{- if .Values.apiKeys.existingSecret }}
- name: api-keys
  mountPath: {{ .Values.apiKeys.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "tierline.podSpecCommon" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
