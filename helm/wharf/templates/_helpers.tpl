{{/* The release's name for its objects (at most 63 characters). */}}
{{- define "wharf.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wharf.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wharf.labels" -}}
{{ include "wharf.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The metrics listener's port, from metrics.address (IP:PORT); "" when off. */}}
{{- define "wharf.metricsPort" -}}
{{- if .Values.metrics.address -}}
{{- $port := regexFind "[0-9]+$" .Values.metrics.address -}}
{{- if not $port -}}
{{- fail (printf "metrics.address %q is not IP:PORT (or \"\" to turn the listener off)" .Values.metrics.address) -}}
{{- end -}}
{{- $port -}}
{{- end -}}
{{- end -}}

{{/* Whether Prometheus is to scrape the nodes; then the listener must be reachable. */}}
{{- define "wharf.scraped" -}}
{{- if or .Values.metrics.annotations .Values.metrics.serviceMonitor.enabled -}}
{{- $address := .Values.metrics.address -}}
{{- if not $address -}}
{{- fail "metrics.annotations and metrics.serviceMonitor need metrics.address: it is \"\" (the listener is off)" -}}
{{- end -}}
{{- if or (hasPrefix "127." $address) (hasPrefix "[::1]" $address) (hasPrefix "localhost" $address) -}}
{{- fail (printf "metrics.annotations and metrics.serviceMonitor need wharfd's metrics on an address Prometheus reaches, not loopback (metrics.address is %q): set metrics.address, e.g. \"0.0.0.0:1338\"" $address) -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* /etc/wharf/wharf.toml: the config text, then the tables the chart writes:
[registry.mirrors] from registryMirrors, [metrics] when metrics.address is not wharf's
default (left unset, a default port already taken is only a warning). */}}
{{- define "wharf.config" -}}
{{- $config := .Values.config | default "" -}}
{{- $tables := dict -}}
{{- if .Values.registryMirrors -}}
{{- $_ := set $tables "registry.mirrors" "registryMirrors" -}}
{{- end -}}
{{- if ne .Values.metrics.address "127.0.0.1:1338" -}}
{{- $_ := set $tables "metrics" "metrics.address" -}}
{{- end -}}
{{- range $table, $value := $tables -}}
{{- if regexMatch (printf "(?m)^\\s*\\[\\s*%s\\s*\\]" (replace "." "\\." $table)) $config -}}
{{- fail (printf "config has a [%s] table, which the chart writes from %s: set it there only" $table $value) -}}
{{- end -}}
{{- end -}}
# /etc/wharf/wharf.toml, written by the Helm release {{ .Release.Name }}: a change
# made here is overwritten; set the chart's values (config, registryMirrors, metrics).
{{- with $config }}

{{ . | trim }}
{{- end }}
{{- if .Values.registryMirrors }}

[registry.mirrors]
{{- range $registry, $endpoints := .Values.registryMirrors }}
{{- if not (kindIs "slice" $endpoints) }}
{{- fail (printf "registryMirrors.%s must be a list of endpoint URLs, e.g. [\"https://mirror.gcr.io\"]" $registry) }}
{{- end }}
{{ toJson $registry }} = {{ toJson $endpoints }}
{{- end }}
{{- end }}
{{- if hasKey $tables "metrics" }}

[metrics]
address = {{ toJson .Values.metrics.address }}
{{- end }}
{{ end -}}
