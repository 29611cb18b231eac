{{/* Chart name, truncated to a DNS label. */}}
{{- define "strata.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; cluster-scoped objects carry it so releases do not collide. */}}
{{- define "strata.fullname" -}}
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

{{/* Labels of every object. */}}
{{- define "strata.labels" -}}
{{ include "strata.commonLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* strata.labels without the instance label (which the selector labels carry). */}}
{{- define "strata.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: strata
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "strata.operator.name" -}}
{{- printf "%s-operator" (include "strata.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "strata.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "strata.operator.serviceAccount" -}}
{{- default (include "strata.operator.name" .) .Values.serviceAccount.operatorName }}
{{- end }}

{{- define "strata.agent.serviceAccount" -}}
{{- default (printf "%s-agent" (include "strata.fullname" .) | trunc 63 | trimSuffix "-") .Values.serviceAccount.agentName }}
{{- end }}

{{- define "strata.leaseName" -}}
{{- default (include "strata.operator.name" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{- define "strata.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* node.nodeSelector as the operator's key=value,key=value flag. */}}
{{- define "strata.node.nodeSelectorFlag" -}}
{{- $pairs := list }}
{{- range $k, $v := .Values.node.nodeSelector }}
{{- $pairs = append $pairs (printf "%s=%v" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
