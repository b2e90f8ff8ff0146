# llm-service: `make run`, `make check`, `make test`, `make lint`, `make bench`.
# Everything runs from one virtual environment, .venv, created by whichever target runs first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv router-venv run check test lint format bench soak chaos clean browser system-packages k8s-config

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# LiteLLM for the router test (tests/router): a venv of its own, because LiteLLM's dependencies
# conflict with constraints.txt (see tests/router/requirements.txt).
ROUTER_VENV := .venv-router
ROUTER_STAMP := $(ROUTER_VENV)/.installed

router-venv: $(ROUTER_STAMP)

$(ROUTER_STAMP): tests/router/requirements.txt
	test -x $(ROUTER_VENV)/bin/python || $(PYTHON) -m venv $(ROUTER_VENV)
	$(ROUTER_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r tests/router/requirements.txt
	touch $(ROUTER_STAMP)

# The container's process tree here: entrypoint.sh -> supervisord (supervisord.conf), state
# under .run/, the Ollama emulator standing in when no `ollama` is on PATH. Ctrl-C stops all.
run: venv
	PY=$(PY) scripts/run-dev.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/shellcheck scripts/*.sh .ci/run healthcheck.sh entrypoint.sh scripts/ollama-shim/ollama
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/yamllint --strict deploy/

# The ConfigMaps of deploy/k8s/base are copies of config/ (kustomize reads no file outside its
# directory); refresh them after editing config/. A new prompt or schema also needs its line in
# base/kustomization.yaml and its item in base/daemonset.yaml (tests/deploy says which).
k8s-config:
	cp config/limits.toml deploy/k8s/base/limits.toml
	cp config/tasks.toml deploy/k8s/base/tasks/tasks.toml
	rm -rf deploy/k8s/base/tasks/prompts deploy/k8s/base/tasks/schemas
	cp -R config/prompts config/schemas deploy/k8s/base/tasks/

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The inner loop: lint and the tests that start no server (tests/unit, tests/deploy).
check: venv
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q tests/unit tests/deploy

# The three installs are independent and mostly wait on the network or apt, so they run side by
# side: on a fresh 2-core machine that took the installs from about 95 s to about 50 s.
# Then lint, then the suite's passes (scripts/test-passes.sh says which and why).
TEST_WORKERS ?= 4
test:
	$(MAKE) --no-print-directory -j3 venv router-venv system-packages
	$(MAKE) --no-print-directory lint
	PY=$(PY) TEST_WORKERS=$(TEST_WORKERS) scripts/test-passes.sh

# Debian's chromium + chromedriver for the status page's browser tests, and podman + runc +
# mmdebstrap for the image tests (installed when missing and root; otherwise those tests skip
# with the reason). One after the other: two apt-get runs at once would fight over dpkg's lock.
system-packages:
	scripts/install-browser.sh
	scripts/install-podman.sh

browser:
	scripts/install-browser.sh

bench: venv
	$(PY) -m bench.proxy_bench
	$(PY) -m bench.swap_bench
	$(PY) -m bench.priority_bench

# Reliability evidence (docs/reliability.md); too long for `make test`, which runs a smoke of
# each (tests/reliability). Summaries, CSV and plot go to bench/results/. Extra flags:
# e.g. `make soak SOAK_ARGS="--minutes 5"`.
soak: venv
	$(PY) -m bench.reliability.soak $(SOAK_ARGS)

chaos: venv
	$(PY) -m bench.reliability.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) $(ROUTER_VENV) .pytest_cache .ruff_cache .run
