#!/usr/bin/env bash
# `make run`: Ollama (or, when no `ollama` binary is on PATH, the bundled emulator) plus the API
# under gunicorn, in the foreground. Ctrl-C stops both. The container uses supervisord instead.
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OLLAMA_URL="${OLLAMA_URL:-http://127.0.0.1:11433}"
export OLLAMA_URL

hostport="${OLLAMA_URL#*://}"
hostport="${hostport%%/*}"
ollama_host="${hostport%:*}"
ollama_port="${hostport##*:}"
if [[ "$ollama_host" == "$hostport" ]]; then
    ollama_port=80
fi

pids=()
# shellcheck disable=SC2329  # invoked by the trap below
stop_all() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    wait || true
}
trap stop_all INT TERM EXIT

if command -v ollama >/dev/null 2>&1; then
    echo "run-dev: starting ollama serve on ${ollama_host}:${ollama_port}" >&2
    OLLAMA_HOST="${ollama_host}:${ollama_port}" ollama serve &
    pids+=("$!")
else
    cat >&2 <<BANNER
run-dev: ################################################################
run-dev: ##  no 'ollama' binary on PATH: starting the Ollama EMULATOR    ##
run-dev: ##  (tests/fake_ollama) on ${ollama_host}:${ollama_port} - answers are fake ##
run-dev: ################################################################
BANNER
    "$PY" -m tests.fake_ollama --host "$ollama_host" --port "$ollama_port" &
    pids+=("$!")
fi

"$PY" -m gunicorn -c config/gunicorn.conf.py management_api.wsgi:app &
pids+=("$!")

# Whichever exits first (crash or Ctrl-C) takes the other down with it.
set +e
wait -n "${pids[@]}"
status=$?
set -e
exit "$status"
