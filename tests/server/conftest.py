"""Fixtures for live-monitoring tests: tiny bundles, sidecars on ephemeral ports, fitted reference bundles.

Every sidecar here is a real gRPC server on 127.0.0.1:0 with a real /metrics HTTP server, and is
stopped when its test ends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tiny_model
from tests.probes.helpers import make_bundle

D_TINY = 64


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny random llama (fp32); its own instance, so wrapping generate cannot leak into other tests."""
    model = make_tiny_model("llama", seed=3)
    # save_pretrained fills in `architectures`, which the fingerprint hashes: set it now so the
    # model's fingerprint and its saved folder's agree for the whole session
    model.config.architectures = [type(model).__name__]
    return model


@pytest.fixture(scope="session")
def tiny_fp(tiny_model) -> str:
    from probewatch.models import fingerprint_model

    return fingerprint_model(tiny_model)


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory, tiny_fp) -> list[Path]:
    """dec (layer 1, response, max), avg (layer 2, response, mean), ref (layer 2, prompt_last, last)."""
    root = tmp_path_factory.mktemp("tiny-bundles")
    dec, _ = make_bundle(root, "dec", layer=1, d=D_TINY, seed=1, aggregation="max", fingerprint=tiny_fp, threshold=1.0)
    avg, _ = make_bundle(
        root,
        "avg",
        layer=2,
        d=D_TINY,
        seed=2,
        aggregation="mean",
        fingerprint=tiny_fp,
        threshold=50.0,
        standardize=True,
        behaviour="alignment_faking",
    )
    ref, _ = make_bundle(
        root,
        "ref",
        layer=2,
        d=D_TINY,
        seed=3,
        aggregation="last",
        fingerprint=tiny_fp,
        threshold=50.0,
        behaviour="refusal",
    )
    manifest = json.loads((ref / "manifest.json").read_text())
    manifest["token_selection"] = "prompt_last"
    (ref / "manifest.json").write_text(json.dumps(manifest))
    return [dec, avg, ref]


@pytest.fixture
def start_sidecar(tmp_path, tiny_fp, tiny_bundles) -> Iterator[Callable]:
    """start_sidecar(**config overrides) -> a started Sidecar (stopped at teardown)."""
    from probewatch.server.sidecar.config import SidecarConfig
    from probewatch.server.sidecar.process import Sidecar

    started = []

    def start(bundles: list[Path] | None = None, **overrides):
        settings = {
            "model_id": "tiny",
            "fingerprint": tiny_fp,
            "bundle_paths": bundles or tiny_bundles,
            "host": "127.0.0.1",
            "port": 0,
            "metrics_host": "127.0.0.1",
            "metrics_port": 0,
            "incident_db": tmp_path / "incidents.sqlite3",
        }
        settings.update(overrides)
        sidecar = Sidecar(SidecarConfig(**settings)).start()
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        sidecar.stop(0)


@pytest.fixture(scope="session")
def reference_bundles(tmp_path_factory, reference) -> list[Path]:
    """Quick mean-difference refusal/deception bundles for the reference model (tests/server/helpers.py)."""
    from tests.server.helpers import fit_reference_bundles

    with torch.inference_mode():
        return fit_reference_bundles(reference, tmp_path_factory.mktemp("reference-bundles"))


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict]]]:
    """(url, received payloads) of a real HTTP webhook receiver on loopback that answers 200 to every POST."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
