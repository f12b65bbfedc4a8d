"""Tests of the vLLM plugin against releases that cannot run here: `make test-vllm-contract` runs
them in .venv-vllm with a release's *Python source* (extracted from its wheel, no compiled parts)
first on PYTHONPATH, so vLLM 0.34's real classes (`InputBatch`, `SchedulerOutput`, the runners)
import without a GPU; `PROBEWATCH_VLLM_SOURCE` names that folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.components import missing


@pytest.fixture(scope="session")
def release_source() -> Path:
    source = os.environ.get("PROBEWATCH_VLLM_SOURCE")
    if not source:
        missing("PROBEWATCH_VLLM_SOURCE is unset: run these through `make test-vllm-contract`")
    import vllm

    root = Path(source).resolve()
    if root not in Path(vllm.__file__).resolve().parents:
        missing(f"vllm imports from {vllm.__file__}, not from {root}: put it first on PYTHONPATH")
    return root
