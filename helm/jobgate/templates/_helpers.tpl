{{/* Names, labels and the values derived from others, in one place. */}}

{{- define "jobgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "jobgate" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-jobgate" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The labels that name the release (left out when comparing with helm/rbac.yaml). */}}
{{- define "jobgate.releaseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "jobgate.labels" -}}
app.kubernetes.io/name: jobgate
{{ include "jobgate.releaseLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The gateway pods' labels that the workers' NetworkPolicy admits
     (JOBGATE_K8S_GATEWAY_SELECTOR): fixed, whatever the release is called. */}}
{{- define "jobgate.gatewayLabels" -}}
app.kubernetes.io/name: jobgate
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "jobgate.gatewaySelector" -}}
{{- $pairs := list -}}
{{- range $k, $v := include "jobgate.gatewayLabels" . | fromYaml -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- define "jobgate.selectorLabels" -}}
{{ include "jobgate.gatewayLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "jobgate.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "jobgate.fullname" .) -}}
{{- end -}}

{{- define "jobgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* A profile's image: its own, or <runtimeImages.repositoryPrefix><name>:<tag>. */}}
{{- define "jobgate.profileImage" -}}
{{- $v := .root.Values.runtimeImages -}}
{{- .profile.image | default (printf "%s%s:%s" $v.repositoryPrefix .name ($v.tag | default .root.Chart.AppVersion)) -}}
{{- end -}}

{{- define "jobgate.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- /* uvicorn waits up to shutdownGraceS + 5 for the requests in flight, then the drain up
to shutdownGraceS for their invocations; the pod's ServiceAccount token is refused (401)
once the grace period is over, so the whole stop must fit in it. */ -}}
{{- add (mul 2 (ceil .Values.config.shutdownGraceS)) 15 (int .Values.preStopSleepSeconds) -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{- define "jobgate.workerGatewayUrl" -}}
{{- $svc := .Values.service -}}
{{- if .Values.config.workerGatewayUrl -}}
{{- .Values.config.workerGatewayUrl -}}
{{- else if and $svc.clusterIP (ne $svc.clusterIP "None") -}}
{{- printf "http://%s:%v" $svc.clusterIP $svc.port -}}
{{- else -}}
{{- printf "http://%s.%s.svc.%s:%v" (include "jobgate.fullname" .) .Release.Namespace .Values.config.clusterDomain $svc.port -}}
{{- end -}}
{{- end -}}

{{- define "jobgate.authSecretName" -}}
{{- .Values.auth.existingSecret | default (include "jobgate.fullname" .) -}}
{{- end -}}

{{- define "jobgate.s3SecretName" -}}
{{- .Values.s3.credentials.existingSecret | default (include "jobgate.fullname" .) -}}
{{- end -}}

{{- define "jobgate.hasS3Credentials" -}}
{{- if or .Values.s3.credentials.existingSecret .Values.s3.credentials.accessKeyId -}}true{{- end -}}
{{- end -}}

{{/* The callback secret: the value, else the one this release already has, else new. */}}
{{- define "jobgate.callbackSecret" -}}
{{- if .Values.auth.callbackSecret -}}
{{- .Values.auth.callbackSecret -}}
{{- else -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace (include "jobgate.fullname" .) -}}
{{- if and $old $old.data (hasKey $old.data "callback-secret") -}}
{{- index $old.data "callback-secret" | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The profile catalogue as TOML (gateway/config/profiles.py reads it). toJson writes
     strings, numbers, booleans and string lists in a form TOML reads as they are. */}}
{{- define "jobgate.profilesToml" -}}
# The profile catalogue of release {{ .Release.Name }} (values: profiles).
{{- range $name, $p := .Values.profiles }}
{{- if $p }}

[profiles.{{ $name | toJson }}]
image = {{ include "jobgate.profileImage" (dict "name" $name "profile" $p "root" $) | toJson }}
{{- range $key, $value := omit $p "image" "pool" }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ $value | toJson }}
{{- end }}
{{- end }}
{{- with $p.pool }}
{{- $parts := list }}
{{- range $key, $value := . }}
{{- $parts = append $parts (printf "%s = %s" $key (toJson $value)) }}
{{- end }}
pool = { {{ join ", " $parts }} }
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Values that are wrong together (values.schema.json checks each one alone). */}}
{{- define "jobgate.validate" -}}
{{- if not (or .Values.auth.apiKeys .Values.auth.existingSecret) -}}
{{- fail "auth.apiKeys is empty: the gateway refuses to serve without API keys. Make one with `jobgate keys new TENANT` and pass its config line's value (tenant:sha256hex) as auth.apiKeys, or name a Secret of yours in auth.existingSecret" -}}
{{- end -}}
{{- $c := .Values.s3.credentials -}}
{{- if and (not $c.accessKeyId) $c.secretAccessKey -}}
{{- fail "s3.credentials.secretAccessKey is set without s3.credentials.accessKeyId" -}}
{{- end -}}
{{- if and $c.accessKeyId (not $c.secretAccessKey) -}}
{{- fail "s3.credentials.accessKeyId is set without s3.credentials.secretAccessKey" -}}
{{- end -}}
{{- if and $c.accessKeyId $c.existingSecret -}}
{{- fail "s3.credentials: give either accessKeyId/secretAccessKey or existingSecret, not both" -}}
{{- end -}}
{{- if le (include "jobgate.terminationGracePeriodSeconds" . | float64) (.Values.config.shutdownGraceS | float64) -}}
{{- fail (printf "terminationGracePeriodSeconds (%s) must exceed config.shutdownGraceS (%v): the kubelet would kill a replica still draining its calls" (include "jobgate.terminationGracePeriodSeconds" .) .Values.config.shutdownGraceS) -}}
{{- end -}}
{{- if and .Values.workers.extraEgress (not .Values.workers.manageNetworkPolicy) -}}
{{- fail "workers.extraEgress needs workers.manageNetworkPolicy=true (the chart renders that policy)" -}}
{{- end -}}
{{- $live := 0 -}}
{{- range $name, $p := .Values.profiles -}}{{- if $p -}}{{- $live = add1 $live -}}{{- end -}}{{- end -}}
{{- if eq $live 0 -}}
{{- fail "profiles is empty: the gateway needs at least one profile" -}}
{{- end -}}
{{- end -}}
