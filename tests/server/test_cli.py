"""`probewatch serve` and `probewatch demo` from the command line: startup errors are one clear line,
and a real sidecar process serves gRPC, health and /metrics, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess

import grpc
import httpx
import pytest

from probewatch.benchmarks.harness import SidecarProcess
from probewatch.cli.main import main
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from tests.components import missing
from tests.probes.helpers import make_bundle


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_model, tiny_fp):
    """The tiny model saved as an HF folder: the sidecar fingerprints it without loading it."""
    from probewatch.models import fingerprint_folder

    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(folder)
    assert fingerprint_folder(folder) == tiny_fp
    return folder


def _serve(capsys, *argv) -> tuple[int, str]:
    code = main(["serve", "--port", "0", "--metrics-port", "-1", *map(str, argv)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "url,why",
    [
        ("not a url", "scheme must be http or https"),
        ("ftp://x/y", "scheme must be"),
        ("http://", "no host"),
        ("http://host:99999/", "out of range"),
    ],
)
def test_malformed_webhook_is_a_cli_error(capsys, tmp_path, tiny_folder, tiny_bundles, url, why):
    code, err = _serve(
        capsys,
        "--model",
        tiny_folder,
        "--bundles",
        *tiny_bundles,
        "--incident-db",
        tmp_path / "i.sqlite3",
        "--webhook",
        url,
    )
    assert code == 2 and err.startswith("probewatch: error: malformed webhook URL") and why in err


def test_unwritable_incident_store_is_a_cli_error(capsys, tmp_path, tiny_folder, tiny_bundles):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    code, err = _serve(
        capsys, "--model", tiny_folder, "--bundles", *tiny_bundles, "--incident-db", blocker / "incidents.sqlite3"
    )
    assert code == 2 and "cannot open the incident store at" in err and "--incident-db" in err


def test_bundles_of_another_model_are_refused(capsys, tmp_path, tiny_folder, tiny_fp):
    other = "pwfp1:" + "cd" * 16
    path, _ = make_bundle(tmp_path, "foreign", layer=1, d=64, fingerprint=other)
    code, err = _serve(capsys, "--model", tiny_folder, "--bundles", path, "--no-incidents")
    assert code == 2
    assert f"fingerprint {other}" in err and tiny_fp in err and "retrain or export the bundle" in err


def test_missing_bundles_and_bad_tls_files_are_cli_errors(capsys, tmp_path, tiny_folder, tiny_bundles):
    code, err = _serve(capsys, "--model", tiny_folder, "--no-incidents")
    assert code == 2 and "no probe bundles for model" in err and "--bundles" in err
    code, err = _serve(
        capsys,
        "--model",
        tiny_folder,
        "--bundles",
        *tiny_bundles,
        "--no-incidents",
        "--tls-cert",
        tmp_path / "missing.pem",
        "--tls-key",
        tmp_path / "missing.key",
    )
    assert code == 2
    assert "cannot read the TLS key" in err or "cannot read the TLS certificate" in err


def test_security_settings_are_checked_at_startup(capsys, tmp_path, tiny_folder, tiny_bundles, tiny_fp):
    import json as _json
    import shutil as _shutil

    (tmp_path / "weak").write_text("short\n")
    code, err = _serve(
        capsys, "--model", tiny_folder, "--bundles", *tiny_bundles, "--auth-token-file", tmp_path / "weak"
    )
    assert code == 2 and "at least 16 random characters" in err
    code, err = _serve(capsys, "--model", tiny_folder, "--bundles", *tiny_bundles, "--max-streams", "0")
    assert code == 2 and "invalid setting max_streams=0" in err
    # a bundle without a weights checksum is refused unless explicitly allowed
    unverified = tmp_path / "unverified"
    _shutil.copytree(tiny_bundles[0], unverified)
    manifest = _json.loads((unverified / "manifest.json").read_text())
    manifest["weights_sha256"] = ""
    (unverified / "manifest.json").write_text(_json.dumps(manifest))
    code, err = _serve(capsys, "--model", tiny_folder, "--bundles", unverified, "--no-incidents")
    assert code == 2 and "records no weights_sha256" in err and "--allow-unverified-bundles" in err
    from probewatch.server.sidecar.config import sidecar_config_for
    from probewatch.server.sidecar.process import Sidecar

    config = sidecar_config_for(str(tiny_folder), [str(unverified)], allow_unverified_bundles=True, port=0)
    assert [b.id for b in Sidecar(config).runtime.bundles] == ["dec"]


def test_port_in_use_is_a_cli_error(capsys, start_sidecar, tiny_folder, tiny_bundles):
    taken = start_sidecar().port
    code = main(
        [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(taken),
            "--metrics-port",
            "-1",
            "--no-incidents",
            "--model",
            str(tiny_folder),
            "--bundles",
            *map(str, tiny_bundles),
        ]
    )
    assert code == 2 and f"cannot listen for gRPC on 127.0.0.1:{taken}" in capsys.readouterr().err


def test_demo_without_bundles_says_what_to_do(capsys, tiny_folder):
    assert main(["demo", "--model", str(tiny_folder)]) == 2
    err = capsys.readouterr().err
    assert "needs trained probe bundles" in err and "--bundles DIR" in err and "make bench-quality" in err


def test_serve_process_end_to_end(tmp_path, tiny_folder, tiny_bundles, tiny_fp):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    args = [
        "--model",
        str(tiny_folder),
        "--bundles",
        *map(str, tiny_bundles),
        "--metrics-port",
        "0",
        "--incident-db",
        str(tmp_path / "i.sqlite3"),
    ]
    sidecar = SidecarProcess(args, tmp_path)
    try:
        channel = grpc.insecure_channel(sidecar.address)
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(service="probewatch.v1.Monitor"), timeout=10).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        listing = pb_grpc.MonitorStub(channel).ListProbes(pb.ListProbesRequest(), timeout=10)
        assert listing.model_fingerprint == tiny_fp and listing.model_id == str(tiny_folder)
        text = httpx.get(f"http://127.0.0.1:{sidecar.metrics_port}/metrics", timeout=10).text
        assert "probewatch_bundle_info{" in text and "probewatch_queue_depth 0.0" in text
        channel.close()
        sidecar.proc.send_signal(signal.SIGTERM)
        assert sidecar.proc.wait(30) == 0
        assert "shutting down" in sidecar.log_file.read_text()
    finally:
        sidecar.stop()


def test_tls_sidecar_and_attach_client(tmp_path, tiny_model, start_sidecar):
    import torch

    if shutil.which("openssl") is None:
        missing("needs the openssl CLI to make a test certificate")

    from probewatch.server.client.hf_attach import attach

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    sidecar = start_sidecar(tls_cert=cert, tls_key=key)
    plain = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address))
    with pytest.raises(grpc.RpcError):
        plain.ListProbes(pb.ListProbesRequest(), timeout=3)  # plaintext is refused
    monitor = attach(tiny_model, sidecar=f"localhost:{sidecar.port}", tls_ca=str(cert), wait_s=10)
    try:
        assert monitor.up
        with torch.inference_mode():
            tiny_model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert monitor.last_generations[0].result(10).status == "closed"
    finally:
        monitor.detach()


def test_ready_file_describes_the_ports(tmp_path, tiny_folder, tiny_bundles):
    sidecar = SidecarProcess(
        ["--model", str(tiny_folder), "--bundles", *map(str, tiny_bundles), "--metrics-port", "-1", "--no-incidents"],
        tmp_path,
    )
    try:
        info = json.loads(sidecar.ready_file.read_text())
        assert info["metrics_port"] is None and info["address"].startswith("127.0.0.1:")
    finally:
        sidecar.stop()


def test_watch_sae_uses_the_runtime_watch_list_syntax():
    from probewatch.cli.serve_cmd import _watch
    from probewatch.errors import ProbewatchError

    assert _watch(["l15:1,2", "other:7;l15:3"]) == {"l15": [1, 2, 3], "other": [7]}
    assert _watch(None) is None
    for bad in ("l15=1,2", "l15:", "l15:x"):
        with pytest.raises(ProbewatchError, match="--watch-sae"):
            _watch([bad])
