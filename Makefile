# mlipilot — developer entry points. `make install`, then `mlipilot run`; `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first, pinned: a bare `torch` requirement resolved by another package would
# pull a multi-GB CUDA build. Override for a GPU machine, e.g. TORCH_SPEC="torch==2.13.0".
TORCH_SPEC ?= torch==2.13.0
# `mlipilot` is linked here so a fresh shell finds it without activating the venv.
LINK_DIR ?= $(shell if [ -w /usr/local/bin ]; then echo /usr/local/bin; else echo $$HOME/.local/bin; fi)

.PHONY: install test test-fast lint format run protos clean

install:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	mkdir -p $(LINK_DIR)
	ln -sf $(abspath $(BIN)/mlipilot) $(LINK_DIR)/mlipilot
	@echo "installed: $(LINK_DIR)/mlipilot -> $(abspath $(BIN)/mlipilot)"
	@case ":$$PATH:" in *":$(LINK_DIR):"*) ;; *) echo "note: add $(LINK_DIR) to PATH";; esac

# Tests run in a network namespace with only loopback when they can (root and `ip`): Ray binds
# the machine's outside address even when told 127.0.0.1, and tests talk to loopback only.
TEST_NETNS ?= mlipilot-test
test:
	@if [ "$$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1; then \
	  ip netns add $(TEST_NETNS) 2>/dev/null || true; \
	  ip netns exec $(TEST_NETNS) ip link set lo up; \
	  echo "tests in network namespace $(TEST_NETNS) (loopback only)"; \
	  ip netns exec $(TEST_NETNS) env RAY_AUTH_MODE=disabled MLIPILOT_REQUIRE_RAY_TESTS=1 \
	    $(BIN)/python -m pytest -q; \
	else \
	  echo "note: not root or no 'ip' command: the Ray tests will be skipped"; \
	  $(BIN)/python -m pytest -q; \
	fi

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check services tests benchmarks
	$(BIN)/ruff format --check services tests benchmarks

format:
	$(BIN)/ruff check --fix services tests benchmarks
	$(BIN)/ruff format services tests benchmarks

run:
	$(BIN)/mlipilot run

# Regenerate services/mlipilot/v1/ from protos/mlipilot/v1/*.proto (committed; a test checks).
protos:
	$(BIN)/python -m mlipilot.rpc.codegen

clean:
	rm -rf runs .pytest_cache .ruff_cache
