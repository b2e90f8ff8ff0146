#!/usr/bin/env bash
# Offline provisioning, run once by supervisord (program gguf-import) when LLM_IMPORT_DIR is set:
# every *.gguf file there becomes an Ollama model named after the file (lower case, e.g.
# Qwen2.5-7B-Instruct-Q4_K_M.gguf -> qwen2.5-7b-instruct-q4_k_m), imported with
# `ollama create` once Ollama answers. A model that already exists is skipped. Failures are
# logged and never fatal: the service runs with whatever models it has. Always exits 0.
set -uo pipefail

ME="gguf-import"
say() {
    printf '%s: %s\n' "$ME" "$*"
}

app_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
import_dir="${LLM_IMPORT_DIR:-}"
if [[ -z "$import_dir" ]]; then
    say "LLM_IMPORT_DIR is not set; nothing to import"
    exit 0
fi
[[ "$import_dir" == /* ]] || import_dir="$app_dir/$import_dir"
if [[ ! -d "$import_dir" ]]; then
    say "LLM_IMPORT_DIR=$import_dir is not a directory; nothing imported"
    exit 0
fi

shopt -s nullglob
files=("$import_dir"/*.gguf)
if ((${#files[@]} == 0)); then
    say "no *.gguf files in $import_dir; nothing to import"
    exit 0
fi

ollama_url="${OLLAMA_URL:-http://127.0.0.1:11433}"
wait_seconds="${LLM_IMPORT_WAIT_SECONDS:-120}"
[[ "$wait_seconds" =~ ^[0-9]+$ ]] || wait_seconds=120
deadline=$((SECONDS + wait_seconds))
until curl -fsS --max-time 2 -o /dev/null "$ollama_url/api/version" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
        say "Ollama did not answer at $ollama_url within ${wait_seconds} s; ${#files[@]} file(s) not imported"
        exit 0
    fi
    sleep 1
done

model_name() {
    local stem
    stem="$(basename "$1" .gguf)"
    stem="${stem,,}"
    stem="${stem//[^a-z0-9._-]/-}"
    printf '%s' "${stem#[._-]}"
}

modelfile="$(mktemp)"
trap 'rm -f "$modelfile"' EXIT
imported=0 skipped=0 failed=0
for file in "${files[@]}"; do
    name="$(model_name "$file")"
    if [[ -z "$name" ]]; then
        say "FAILED $file: no usable model name in the file name"
        failed=$((failed + 1))
        continue
    fi
    if ollama show "$name" >/dev/null 2>&1; then
        say "skipped $file: model $name already exists"
        skipped=$((skipped + 1))
        continue
    fi
    printf 'FROM %s\n' "$file" >"$modelfile"
    say "importing $file as $name (Ollama copies it into its model store)"
    if output="$(ollama create "$name" -f "$modelfile" 2>&1)"; then
        say "imported $name"
        imported=$((imported + 1))
    else
        say "FAILED $file: $(printf '%s' "$output" | tail -n 1)"
        failed=$((failed + 1))
    fi
done
say "done: $imported imported, $skipped skipped (already present), $failed failed"
exit 0
