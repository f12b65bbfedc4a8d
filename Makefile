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

.PHONY: setup demo test bench bench-capture bench-quality bench-overhead bench-ingest sae proto lint clean

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

# Every benchmark, one after the other (not in parallel: they time the same 2 cores).
bench: bench-capture bench-overhead bench-ingest bench-quality

# Residual-capture cost on a 64-token batch forward of the reference model: hooked vs unhooked.
CAPTURE_ARGS ?= --layers 9 --repeats 7
bench-capture: setup
	$(BIN)/probewatch bench capture --json $(CAPTURE_ARGS)

# Detection quality: trains every shipped probe (deception, refusal x2, alignment faking) from
# $(PROBEWATCH_DATA), copies the bundles to probes/shipped/<model>/ and writes docs/quality.md
# (+ docs/quality/<probe>/ plots), then fits SAE-feature probes on the shipped SAE for the same
# behaviours and tabulates them beside the linear ones. First run extracts activations and generates the control set
# (cached under PROBEWATCH_HOME); QUALITY_ARGS e.g. "--probes refusal --no-ship".
QUALITY_ARGS ?=
bench-quality: setup
	@mkdir -p runs; start=$$(date +%s); $(BIN)/probewatch bench quality $(QUALITY_ARGS) && \
	echo "bench-quality: $$(( $$(date +%s) - start ))s" | tee -a runs/bench-quality.log

# Retrain the shipped SAE (layer 15, TopK 3072, k=32; ~30 min on 2 CPU cores, activations cached
# under PROBEWATCH_HOME) and refit the SAE-feature probes into PROBEWATCH_HOME/bundles (docs/sae.md).
SAE_DIR ?= probes/shipped/saes/smollm2-135m-instruct/l15-topk-3k-k32
sae: setup
	$(BIN)/probewatch sae train --layer 15 --d-sae 3072 --k 32 --threads 1 --out $(SAE_DIR)
	for b in deception refusal alignment_faking; do for m in l1 named; do \
	  $(BIN)/probewatch sae probe --sae $(SAE_DIR) --behaviour $$b --method $$m --threads 1 || exit 1; done; done

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
