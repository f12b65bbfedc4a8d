"""Helpers of the deployment tests that run real processes: a tiny model folder the sidecar can
fingerprint, bundles for it, free loopback ports, and subprocesses that are always cleaned up."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.waiting import wait_until


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    """Wait for a service: errors (connection refused while it starts) are retried until the deadline."""
    return wait_until(predicate, timeout, what, interval=interval, retry_errors=True)


class Service:
    """A subprocess in its own process group, its output in a log file; stop() always cleans up."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None) -> None:
        self.name, self.log = name, log
        self._fh = open(log, "wb")  # noqa: SIM115 - held open for the child process's lifetime
        # If pytest itself is killed (a hard timeout), the kernel sends SIGTERM to the child too.
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "TERM"] if setpriv and sys.platform.startswith("linux") else []
        self.proc = subprocess.Popen(
            prefix + argv, stdout=self._fh, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=log.parent
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._fh.close()


def save_tiny_model(folder: Path):
    """A tiny random-init Llama saved as an HF folder: (model, folder, fingerprint)."""
    from probewatch.models import fingerprint_folder
    from tests.conftest import make_tiny_model

    model = make_tiny_model("llama", seed=7)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder, fingerprint_folder(folder)


def make_bundles(out: Path, tiny_model, behaviours: dict[str, str]) -> list[Path]:
    """One mean-difference bundle per (probe id, behaviour), on layers 1, 2, ..., each a random
    direction with a threshold every generation crosses (so every generation alerts), and a calibration
    reference of N(0, 1) scores (so the sidecar reports score drift and the expected alert rate, 1)."""
    import numpy as np
    import torch

    from probewatch.probes.calibration import reference_from_scores
    from probewatch.probes.synthetic import synthetic_manifest, write_synthetic_bundle

    model, _, fingerprint = tiny_model
    d = model.config.hidden_size
    generator = torch.Generator().manual_seed(3)
    paths = []
    for layer, (probe_id, behaviour) in enumerate(behaviours.items(), start=1):
        selection, aggregation = ("prompt_last", "last") if behaviour == "refusal" else ("response", "mean")
        manifest = synthetic_manifest(
            probe_id,
            d_model=d,
            layer=layer,
            model_id="tiny-llama",
            fingerprint=fingerprint,
            n_layers=model.config.num_hidden_layers,
            behaviour=behaviour,
            kind="mean_diff",
            threshold=-1000.0,
            aggregation=aggregation,
            token_selection=selection,
            version=f"e2e-{layer}",
            description="tests/deploy: a random direction; the threshold makes every generation alert",
        )
        reference = reference_from_scores(np.random.default_rng(layer).standard_normal(1000), -1000.0)
        assert reference is not None
        manifest.extra["calibration_reference"] = reference.to_json()
        paths.append(write_synthetic_bundle(out, manifest, generator=generator)[0])
    return paths


def probewatch_exe() -> str:
    return str(Path(sys.executable).parent / "probewatch")
