#!/usr/bin/env bash
# `make run`: the container's process tree on this machine, in the foreground. entrypoint.sh
# validates and maps the environment, then becomes supervisord with the real supervisord.conf
# (Ollama, the API, the listeners). Logs, pid file and control socket live under .run/.
# With no `ollama` binary on PATH, scripts/ollama-shim goes first on supervisord's PATH, so
# `ollama serve` starts the bundled emulator instead (announced loudly).
# Ctrl-C reaches supervisord (this script execs into it), which stops every program it started.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PY:-.venv/bin/python}"
if [[ "$python" == */* && "$python" != /* ]]; then
    python="$root/$python"
fi

run_dir="${LLM_RUN_DIR:-$root/.run}"
mkdir -p "$run_dir"
# Keeps .run/ out of git without touching .gitignore (pytest does the same for its cache).
[[ -e "$run_dir/.gitignore" ]] || printf '# created by scripts/run-dev.sh\n*\n' >"$run_dir/.gitignore"

export LLM_RUN_DIR="$run_dir"
# A workstation run answers this machine only; LLM_BIND_HOST=0.0.0.0 opens it to the network.
export LLM_BIND_HOST="${LLM_BIND_HOST:-127.0.0.1}"
export LLM_LOG_DIR="${LLM_LOG_DIR:-$run_dir/logs}"
export LLM_SUPERVISOR_SOCKET="${LLM_SUPERVISOR_SOCKET:-$run_dir/supervisor.sock}"
export LLM_PYTHON="${LLM_PYTHON:-$python}"
export PYTHONUNBUFFERED=1

if ! command -v ollama >/dev/null 2>&1; then
    cat >&2 <<BANNER
run-dev: #####################################################################
run-dev: ##  no 'ollama' binary on PATH: supervisord's 'ollama serve' runs the  ##
run-dev: ##  Ollama EMULATOR (tests/fake_ollama) - every answer is fake.        ##
run-dev: #####################################################################
BANNER
    export PATH="$root/scripts/ollama-shim:$PATH"
fi

echo "run-dev: listening on $LLM_BIND_HOST (LLM_BIND_HOST); logs in $LLM_LOG_DIR; programs: LLM_SUPERVISOR_SOCKET=$LLM_SUPERVISOR_SOCKET .venv/bin/supervisorctl -c supervisord.conf status" >&2
exec "$root/entrypoint.sh"
