#!/usr/bin/env bash
# Docker HEALTHCHECK: one bounded call to the management API's /health.
# Exit 0 when it answers 200 (healthy or degraded), 1 otherwise; always one line saying why.
set -uo pipefail

base="${LLM_MANAGEMENT_URL:-http://127.0.0.1:${LLM_MANAGEMENT_PORT:-11436}}"
url="${base%/}/health"
max_time="${LLM_HEALTHCHECK_TIMEOUT:-5}"

if ! command -v curl >/dev/null 2>&1; then
    echo "unhealthy: curl is not installed, cannot call ${url}"
    exit 1
fi

body_file="$(mktemp)"
trap 'rm -f "$body_file"' EXIT

code="$(curl -sS -o "$body_file" -w '%{http_code}' --max-time "$max_time" "$url" 2>/dev/null)" || code="000"

field() {
    # The first occurrence of a top-level string field; jq when present, grep otherwise.
    if command -v jq >/dev/null 2>&1; then
        jq -r --arg key "$1" '.[$key] // empty' <"$body_file" 2>/dev/null
    else
        grep -o "\"$1\": *\"[^\"]*\"" "$body_file" 2>/dev/null | head -n 1 | sed 's/.*: *"\(.*\)"$/\1/'
    fi
}

status="$(field status)"
case "$code" in
    200)
        echo "healthy: /health answered 200 (status ${status:-unknown})"
        exit 0
        ;;
    000)
        echo "unhealthy: no answer from ${url} within ${max_time} s"
        exit 1
        ;;
    *)
        reason="$(field reason)"
        echo "unhealthy: /health answered ${code} (${reason:-status ${status:-unknown}})"
        exit 1
        ;;
esac
