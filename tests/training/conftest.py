"""Fixtures for training tests: a tiny HF model folder (random init + word-level tokenizer)."""

from __future__ import annotations

import pytest

from tests.training.helpers import save_tiny_model


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_folder(tmp_path_factory):
    """Same architecture, different weights: a different fingerprint."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model-b"), seed=1)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_folder):
    from probewatch.models import load_model

    return load_model(str(tiny_folder))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Caches and user bundles of each test live in its own tmp folder."""
    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PROBEWATCH_ACTIVATIONS", raising=False)
