# Two user-facing targets do all set-up: `make demo` (the main job on the real sample slide) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: venv demo test test-slow bench clean serve-assets azurite chromium netns-tools

# torch/torchvision first, pinned to the pair that ships on local disk (no network download where it
# exists; the only pair with which torchvision and timm import there); elsewhere pip picks a current torch.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install --quiet torch torchvision
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	MVH=$(BIN)/mvh bash scripts/demo.sh $(DEMO_DIR)

test: $(STAMP) serve-assets azurite chromium netns-tools
	$(BIN)/python -m pytest -q

# The tests marked slow (minutes each on 2 cores): CI runs them after `make test`.
test-slow: $(STAMP) serve-assets azurite chromium netns-tools
	$(BIN)/python -m pytest -q -m slow

# `mvh serve`: OpenSeadragon from the npm registry (served by the app, no CDN), and Debian's chromium
# for the browser tests (apt, only where /usr/bin/chromium is missing).
SERVE_ASSETS := mvh/serve/node_modules/.package-lock.json
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(SERVE_ASSETS): mvh/serve/package.json mvh/serve/package-lock.json
	command -v npm >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends npm; }
	cd mvh/serve && npm ci --no-audit --no-fund

serve-assets: $(SERVE_ASSETS)

# The Azure tests: Azurite (Microsoft's Azure Storage emulator) from the npm registry, pinned by its own lock file.
AZURITE := tests/sharing/azurite/node_modules/.package-lock.json

$(AZURITE): tests/sharing/azurite/package.json tests/sharing/azurite/package-lock.json
	command -v npm >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends npm; }
	cd tests/sharing/azurite && npm ci --no-audit --no-fund

azurite: $(AZURITE)

chromium:
	test -x $(CHROMIUM) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; }

# The Ray tests run in a loopback-only network namespace: `unshare` (util-linux) and `ip` (iproute2).
netns-tools:
	command -v unshare >/dev/null && command -v ip >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends util-linux iproute2; }

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR)
