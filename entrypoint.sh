#!/usr/bin/env bash
# llm-service entry point: the container's ENTRYPOINT, and the last step of `make run`.
#
# 1. validate the environment (one line naming the variable, exit 2, before anything starts);
# 2. translate llm-service settings into Ollama's variables: OLLAMA_HOST from OLLAMA_URL (or the
#    public proxy port when LLM_PROXY_ENABLED=false), OLLAMA_KEEP_ALIVE, OLLAMA_CONTEXT_LENGTH,
#    and JETSON_JETPACK from /etc/nv_tegra_release on a Jetson;
# 3. create the log and run directories;
# 4. exec supervisord with supervisord.conf, which reads the paths set here.
#
# LLM_ENTRYPOINT_DRY_RUN=1 stops before step 3 and prints the resulting environment and the
# command instead (the tests use it). LLM_NV_TEGRA_RELEASE points the Jetson detection at
# another file.
set -euo pipefail

APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ME="llm-service entrypoint"

die() {
    printf 'llm-service: configuration error: %s\n' "$*" >&2
    exit 2
}

say() {
    printf '%s: %s\n' "$ME" "$*" >&2
}

# An empty variable counts as unset, as in management_api/settings.py (compose files often
# pass VAR= for "not set").
value_of() {
    local name="$1"
    printf '%s' "${!name:-}"
}

require_port() {
    local name="$1" value
    value="$(value_of "$name")"
    [[ -z "$value" ]] && return 0
    if [[ ! "$value" =~ ^[0-9]{1,5}$ ]] || ((10#$value < 1 || 10#$value > 65535)); then
        die "$name='$value' is invalid: expected a TCP port number between 1 and 65535"
    fi
}

# "-007" -> -7: base 10 whatever the leading zeros (bash reads 010 as octal otherwise).
to_int() {
    local value="$1"
    if [[ "$value" == -* ]]; then
        printf '%s' "$((-10#${value#-}))"
    else
        printf '%s' "$((10#$value))"
    fi
}

require_integer() {
    local name="$1" minimum="$2" accepted="$3" value
    value="$(value_of "$name")"
    [[ -z "$value" ]] && return 0
    if [[ ! "$value" =~ ^-?[0-9]{1,18}$ ]] || (($(to_int "$value") < minimum)); then
        die "$name='$value' is invalid: expected $accepted"
    fi
}

# Prints true/false for the spellings settings.py accepts.
parse_bool() {
    local name="$1" default="$2" value
    value="$(value_of "$name")"
    case "${value,,}" in
        "") printf '%s' "$default" ;;
        1 | true | yes | on) printf 'true' ;;
        0 | false | no | off) printf 'false' ;;
        *) die "$name='$value' is invalid: expected true or false (also 1/0, yes/no, on/off)" ;;
    esac
}

# Relative paths are relative to the project, as in settings.py.
absolute_path() {
    case "$1" in
        /*) printf '%s' "$1" ;;
        *) printf '%s/%s' "$APP_DIR" "$1" ;;
    esac
}

# OLLAMA_URL -> "host port" (no scheme, no brackets); dies unless it is http://host[:port].
split_ollama_url() {
    local url="$1"
    local pattern='^http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:([0-9]{1,5}))?/?$'
    if [[ "$url" =~ ^https:// ]]; then
        die "OLLAMA_URL='$url' is invalid: the bundled Ollama serves plain http:// only"
    fi
    if [[ ! "$url" =~ $pattern ]]; then
        die "OLLAMA_URL='$url' is invalid: expected an http:// URL with a host, e.g. http://127.0.0.1:11433"
    fi
    local host="${BASH_REMATCH[1]}" port="${BASH_REMATCH[3]:-80}"
    if ((10#$port < 1 || 10#$port > 65535)); then
        die "OLLAMA_URL='$url' is invalid: the port must be between 1 and 65535"
    fi
    printf '%s %s' "$host" "$((10#$port))"
}

# "# R36 (release), REVISION: 4.3, ..." -> 6, as Ollama itself maps it (discover/gpu.go):
# R35 is JetPack 5, R36 JetPack 6; anything else is left to Ollama.
jetpack_from_release_file() {
    local file="$1" first release
    [[ -r "$file" ]] || return 0
    IFS= read -r first <"$file" || true
    [[ "$first" =~ \ R([0-9]+)\  ]] || return 0
    release="${BASH_REMATCH[1]}"
    case "$release" in
        35) printf '5' ;;
        36) printf '6' ;;
        *) say "L4T R$release in $file is not a JetPack Ollama knows (R35, R36); JETSON_JETPACK left unset" ;;
    esac
}

# --- 1. validation of what this script itself uses (the rest is checked by settings.py below)

require_port LLM_PROXY_PORT
require_port LLM_MANAGEMENT_PORT
require_integer LLM_KEEP_ALIVE_SECONDS -999999999999999999 "whole seconds (negative = keep loaded forever)"
require_integer LLM_CONTEXT_LENGTH 1 "a whole number of 1 or more"
require_integer JETSON_JETPACK 1 "a JetPack major version such as 6"

proxy_port="$(value_of LLM_PROXY_PORT)"
proxy_port="$(to_int "${proxy_port:-11434}")"
management_port="$(value_of LLM_MANAGEMENT_PORT)"
management_port="$(to_int "${management_port:-11436}")"
proxy_enabled="$(parse_bool LLM_PROXY_ENABLED true)"
dry_run="$(parse_bool LLM_ENTRYPOINT_DRY_RUN false)"
bind_host="$(value_of LLM_BIND_HOST)"
bind_host="${bind_host:-0.0.0.0}"

# --- 2. Ollama's environment

ollama_url="$(value_of OLLAMA_URL)"
ollama_url="${ollama_url:-http://127.0.0.1:11433}"
if [[ "$proxy_enabled" == "false" ]]; then
    # Escape hatch: no proxy; Ollama itself serves the public port and the API talks to it there.
    case "$bind_host" in
        0.0.0.0) url_host=127.0.0.1 ;;
        "::" | "[::]") url_host="[::1]" ;;
        *:*) url_host="[${bind_host#[}" && url_host="${url_host%]}]" ;;
        *) url_host="$bind_host" ;;
    esac
    listen_host="$bind_host"
    if [[ "$listen_host" == *:* ]]; then
        listen_host="[${listen_host#[}" && listen_host="${listen_host%]}]"
    fi
    ollama_host="${listen_host}:${proxy_port}"
    new_url="http://${url_host}:${proxy_port}"
    if [[ -n "$(value_of OLLAMA_URL)" && "$ollama_url" != "$new_url" ]]; then
        say "LLM_PROXY_ENABLED=false: Ollama serves port ${proxy_port} itself; OLLAMA_URL=${ollama_url} replaced by ${new_url}"
    fi
    ollama_url="$new_url"
else
    url_parts="$(split_ollama_url "$ollama_url")"
    read -r url_host url_port <<<"$url_parts"
    if ((url_port == proxy_port || url_port == management_port)); then
        die "OLLAMA_URL='$ollama_url' is invalid: port ${url_port} is where the API listens; use an internal port such as 11433"
    fi
    ollama_host="${url_host}:${url_port}"
fi
export OLLAMA_URL="$ollama_url"

# Ollama reads OLLAMA_HOST; an old deployment may still set it to the public 0.0.0.0:11434,
# which the proxy owns now. OLLAMA_URL decides.
if [[ -n "${OLLAMA_HOST:-}" && "$OLLAMA_HOST" != "$ollama_host" ]]; then
    say "OLLAMA_HOST=${OLLAMA_HOST} replaced by ${ollama_host} (derived from OLLAMA_URL and LLM_PROXY_ENABLED)"
fi
export OLLAMA_HOST="$ollama_host"

if [[ -n "$(value_of LLM_KEEP_ALIVE_SECONDS)" ]]; then
    # Ollama reads a plain integer as seconds; a negative one keeps models loaded forever.
    OLLAMA_KEEP_ALIVE="$(to_int "$LLM_KEEP_ALIVE_SECONDS")"
    export OLLAMA_KEEP_ALIVE
fi
if [[ -n "$(value_of LLM_CONTEXT_LENGTH)" ]]; then
    OLLAMA_CONTEXT_LENGTH="$(to_int "$LLM_CONTEXT_LENGTH")"
    export OLLAMA_CONTEXT_LENGTH
fi

# The official image has no /etc/nv_tegra_release; without JETSON_JETPACK (or the file mounted
# from the host) Ollama skips its JetPack runners and falls back to the CPU.
release_file="${LLM_NV_TEGRA_RELEASE:-/etc/nv_tegra_release}"
if [[ -z "$(value_of JETSON_JETPACK)" ]]; then
    jetpack="$(jetpack_from_release_file "$release_file")"
    if [[ -n "$jetpack" ]]; then
        export JETSON_JETPACK="$jetpack"
        say "Jetson detected from ${release_file}: JETSON_JETPACK=${JETSON_JETPACK}"
    fi
fi

# --- paths supervisord.conf reads

LLM_PYTHON="$(value_of LLM_PYTHON)"
if [[ -z "$LLM_PYTHON" ]]; then
    if [[ -x "$APP_DIR/.venv/bin/python" ]]; then
        LLM_PYTHON="$APP_DIR/.venv/bin/python"
    else
        LLM_PYTHON="$(command -v python3 || true)"
    fi
fi
[[ -n "$LLM_PYTHON" && -x "$LLM_PYTHON" ]] || die "LLM_PYTHON='$LLM_PYTHON' is invalid: expected the service's Python interpreter"
export LLM_PYTHON

log_dir="$(value_of LLM_LOG_DIR)"
LLM_LOG_DIR="$(absolute_path "${log_dir:-logs}")"
ollama_log="$(value_of LLM_OLLAMA_LOG_FILE)"
LLM_OLLAMA_LOG_FILE="$(absolute_path "${ollama_log:-$LLM_LOG_DIR/ollama.log}")"
run_dir="$(value_of LLM_RUN_DIR)"
LLM_RUN_DIR="$(absolute_path "${run_dir:-/run/llm-service}")"
socket="$(value_of LLM_SUPERVISOR_SOCKET)"
LLM_SUPERVISOR_SOCKET="$(absolute_path "${socket:-$LLM_RUN_DIR/supervisor.sock}")"
export LLM_LOG_DIR LLM_OLLAMA_LOG_FILE LLM_RUN_DIR LLM_SUPERVISOR_SOCKET
# sockaddr_un holds 108 bytes including the terminating NUL.
if ((${#LLM_SUPERVISOR_SOCKET} > 107)); then
    die "LLM_SUPERVISOR_SOCKET='$LLM_SUPERVISOR_SOCKET' is invalid: a unix socket path must be at most 107 bytes"
fi
supervisor_conf="$(value_of LLM_SUPERVISOR_CONF)"
supervisor_conf="$(absolute_path "${supervisor_conf:-supervisord.conf}")"

if [[ -n "$(value_of LLM_IMPORT_DIR)" ]]; then
    export LLM_IMPORT_AUTOSTART=true
else
    export LLM_IMPORT_AUTOSTART=false
fi

# Everything else (intervals, limits file, auth, ...) is validated by the code that reads it,
# now, so a bad value ends the start here with the same one line gunicorn would print.
(
    cd "$APP_DIR"
    "$LLM_PYTHON" - <<'PY'
import sys

from management_api.settings import Settings, SettingsError

try:
    Settings.load()
except SettingsError as exc:
    print(f"llm-service: configuration error: {exc}", file=sys.stderr)
    sys.exit(2)
PY
) || exit $?

command=("$LLM_PYTHON" "$APP_DIR/scripts/run_supervisord.py" --nodaemon --configuration "$supervisor_conf")

if [[ "$dry_run" == "true" ]]; then
    for name in OLLAMA_URL OLLAMA_HOST OLLAMA_KEEP_ALIVE OLLAMA_CONTEXT_LENGTH JETSON_JETPACK \
        LLM_PYTHON LLM_LOG_DIR LLM_OLLAMA_LOG_FILE LLM_RUN_DIR LLM_SUPERVISOR_SOCKET \
        LLM_IMPORT_AUTOSTART; do
        if [[ -n "${!name:-}" ]]; then
            printf '%s=%s\n' "$name" "${!name}"
        fi
    done
    printf 'exec:'
    printf ' %q' "${command[@]}"
    printf '\n'
    exit 0
fi

# --- 3. directories (0700 where we create them: the supervisor socket lives in the run dir)

for dir in "$LLM_LOG_DIR" "$(dirname "$LLM_OLLAMA_LOG_FILE")" "$LLM_RUN_DIR" "$(dirname "$LLM_SUPERVISOR_SOCKET")"; do
    if [[ ! -d "$dir" ]]; then
        { mkdir -p "$dir" && chmod 0700 "$dir"; } 2>/dev/null || die "cannot create directory '$dir' as uid $(id -u)"
    fi
    [[ -w "$dir" ]] || die "directory '$dir' is not writable by uid $(id -u)"
done

if [[ "$proxy_enabled" == "true" ]]; then
    say "Ollama on ${OLLAMA_HOST} (internal), proxy on port ${proxy_port}, management on ${management_port}, logs in ${LLM_LOG_DIR}"
else
    say "Ollama on ${OLLAMA_HOST} (public, proxy disabled), management on ${management_port}, logs in ${LLM_LOG_DIR}"
fi

# --- 4. supervisord as this process (PID 1 in the container), so it gets docker stop's SIGTERM
exec "${command[@]}"
