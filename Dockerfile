# llm-service: Ollama + the management API / Ollama-compatible proxy under supervisord.
#
#   docker build -t llm-service .                                  # the host's architecture
#   docker buildx build --platform linux/arm64 -t llm-service .    # Jetson (JetPack 6)
#
# Ollama comes from an official ollama/ollama image: its `ollama` binary plus /usr/lib/ollama,
# which on arm64 holds the cuda_jetpack5 / cuda_jetpack6 runners. Both are copied onto
# BASE_IMAGE because JetPack 6's Tegra libraries need GLIBC >= 2.34 (Ubuntu 22.04 has 2.35);
# on an older base Ollama silently falls back to the CPU. When changing OLLAMA_IMAGE, check
# Ollama's start-up log on the device for `library=cuda ... name=Orin`.

# The Ollama release the platform runs: the newest whose arm64 image carries the JetPack 6
# runners (docs/operations.md); the emulator follows the same version (a test checks).
ARG OLLAMA_IMAGE=ollama/ollama:0.32.15
# Multi-arch (amd64, arm64); the same release line as JetPack 6's userspace (L4T R36).
ARG BASE_IMAGE=ubuntu:22.04

FROM ${OLLAMA_IMAGE} AS ollama

# --- Python dependencies, built in a throw-away stage so no compiler or pip cache ships
FROM ${BASE_IMAGE} AS python-deps

ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Versions come with the pinned BASE_IMAGE release; pinning .deb versions too would break the
# build whenever Ubuntu's archive moves on, without making it more reproducible.
# The compiler is for any dependency without a wheel for this architecture; it stays here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY pyproject.toml constraints.txt README.md ./
COPY management_api/__init__.py management_api/__init__.py
# The runtime requirements exactly as pinned in pyproject.toml + constraints.txt: install the
# project (which pulls them in), then remove the project itself; the code runs from /app.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -c constraints.txt . \
    && /opt/venv/bin/pip uninstall -y llm-service

# --- the image
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
# curl: healthcheck.sh and the GGUF import (the official Ollama image has none); jq: the health
# check's JSON parsing; libvulkan1/libopenblas0: what the official Ollama image installs for
# its runners.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates curl jq python3 libvulkan1 libopenblas0 \
    && rm -rf /var/lib/apt/lists/*

# Same user and model path as the deployment this replaces (uid 1000, /home/ollama/.ollama),
# so the existing model volume keeps working. video/render: Jetson's GPU device nodes.
# `render` is a system group: an ordinary one would take the first free GID from 1000 up, the
# one `ollama` needs (ubuntu:22.04 and Debian have no `render` group; ubuntu:24.04 frees 1000
# by removing its `ubuntu` user).
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --force --system render \
    && groupadd --gid 1000 ollama \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ollama --shell /bin/bash \
        --groups video,render ollama \
    && mkdir -p /home/ollama/.ollama/models /var/log/llm-service /run/llm-service \
        /var/lib/llm-service \
    && chown -R ollama:ollama /home/ollama/.ollama /var/log/llm-service /run/llm-service \
        /var/lib/llm-service \
    && chmod 0700 /run/llm-service

COPY --from=ollama /usr/bin/ollama /usr/bin/ollama
COPY --from=ollama /usr/lib/ollama /usr/lib/ollama
COPY --from=python-deps /opt/venv /opt/venv

# The code stays owned by root: the service user cannot change what it runs.
WORKDIR /app
COPY config/ config/
COPY management_api/ management_api/
COPY scripts/supervisor_events.py scripts/run_supervisord.py scripts/import-gguf.sh scripts/
COPY supervisord.conf entrypoint.sh healthcheck.sh ./

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LLM_PYTHON=/opt/venv/bin/python \
    LLM_LOG_DIR=/var/log/llm-service \
    LLM_RUN_DIR=/run/llm-service \
    LLM_STATE_DIR=/var/lib/llm-service \
    LLM_SUPERVISOR_SOCKET=/run/llm-service/supervisor.sock \
    OLLAMA_MODELS=/home/ollama/.ollama/models \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The uid alone, not 1000:1000: with an explicit group the engine drops the supplementary
# groups (video, render) that useradd gave the user, and the GPU nodes would be out of reach.
USER 1000
EXPOSE 11434 11436

# Model loads on a Jetson take tens of seconds; failures during the start period do not count.
# (No --start-interval: Docker Engines before 25 reject the whole instruction.)
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["/app/healthcheck.sh"]

# entrypoint.sh validates and maps the environment, then execs supervisord, which stays PID 1:
# it receives docker stop's SIGTERM and reaps orphans, so no extra init is needed.
ENTRYPOINT ["/app/entrypoint.sh"]
