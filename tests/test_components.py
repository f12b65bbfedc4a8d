"""A missing real component skips by hand and fails under `make test` (tests/components.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.components import REQUIRE_ALL

REPO_ROOT = Path(__file__).resolve().parent.parent


BODY = """
from tests.components import missing

def test_needs_a_component():
    missing("frobnicator not installed (apt-get install frobnicator)")
"""


@pytest.mark.parametrize(("require_all", "outcome"), [("", "1 skipped"), ("1", "1 failed")])
def test_missing_component_skips_by_hand_and_fails_under_make_test(tmp_path, require_all, outcome):
    test_file = tmp_path / "test_needs.py"
    test_file.write_text(BODY)
    env = {**os.environ, REQUIRE_ALL: require_all, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(test_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert outcome in proc.stdout, proc.stdout + proc.stderr
    assert "frobnicator not installed" in proc.stdout
    if require_all:
        assert proc.returncode == 1
        assert f"{REQUIRE_ALL}=1" in proc.stdout
    else:
        assert proc.returncode == 0
