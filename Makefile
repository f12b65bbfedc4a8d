# probewatch — the two README commands are `make demo` (main job) and `make test` (the suite).
# Both set up everything on a fresh machine: a virtualenv, a CPU torch installed first (a bare
# torch requirement would pull a multi-GB CUDA build), then this package with its dev extras.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
SHARED_DATA ?= $(abspath ../shared/datasets)
export PROBEWATCH_DATA ?= $(SHARED_DATA)
PYTEST_ARGS ?=

.PHONY: setup demo test bench bench-quality bench-overhead bench-ingest proto lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/probewatch demo

test: setup
	bash deploy/scripts/ensure-prometheus.sh
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Detection quality: trains every shipped probe (deception, refusal x2, alignment faking) from
# $(PROBEWATCH_DATA), copies the bundles to probes/shipped/<model>/ and writes docs/quality.md
# (+ docs/quality/<probe>/ plots). First run extracts activations and generates the control set
# (cached under PROBEWATCH_HOME); QUALITY_ARGS e.g. "--probes refusal --no-ship".
QUALITY_ARGS ?=
bench-quality: setup
	@mkdir -p runs; start=$$(date +%s); $(BIN)/probewatch bench quality $(QUALITY_ARGS) && \
	echo "bench-quality: $$(( $$(date +%s) - start ))s" | tee -a runs/bench-quality.log

# Monitoring cost on the reference model: tokens/s with monitoring off vs raw rows vs pushdown
# (alternating, medians, ratios); BENCH_ARGS e.g. "--new-tokens 32 --repeats 7 --batch 4".
BENCH_ARGS ?=
bench-overhead: setup
	$(BIN)/probewatch bench overhead --json $(BENCH_ARGS)

# Sidecar ingest rate of raw residual chunks over loopback gRPC vs a raw socket copy of the same bytes.
bench-ingest: setup
	$(BIN)/probewatch bench ingest --json $(BENCH_ARGS)

# Regenerate the committed gRPC stubs from proto/probewatch/v1/*.proto (tests/proto fails on drift).
proto: setup
	$(BIN)/python -m probewatch.proto.generate

lint: setup
	$(BIN)/python -m ruff check probewatch probes training server tests || true

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
