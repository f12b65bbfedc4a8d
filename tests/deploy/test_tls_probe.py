"""The chart's TLS health probe against a real TLS sidecar.

Renders the standalone example (tls.enabled, clientAuth) with the chart, takes the exec probe
command the kubelet would run, points its /etc/probewatch/tls paths at certificates made here
with openssl (a CA, and a server certificate for the Service's DNS name with server+client auth
usages, as a kubernetes.io/tls Secret with ca.crt holds them) and runs it against
`probewatch serve --tls-cert --tls-key --tls-client-ca`: SERVING. Without the client certificate,
or expecting another server name, the check must fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.components import missing
from tests.deploy.conftest import REPO
from tests.deploy.tiny import Service, free_port, make_bundles, probewatch_exe, save_tiny_model, wait_for

pytestmark = pytest.mark.timeout(240)
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"
SERVER_NAME = "probewatch.llm.svc"


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        missing("openssl not installed: it makes the test certificates")
    d = tmp_path_factory.mktemp("tls")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=probewatch-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=d,
    )
    (d / "ext.cnf").write_text(
        f"subjectAltName=DNS:{SERVER_NAME},DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={SERVER_NAME}",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        cwd=d,
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.crt",
        cwd=d,
    )
    return d


@pytest.fixture(scope="module")
def tls_sidecar(tmp_path_factory, tls_dir):
    work = tmp_path_factory.mktemp("tls-sidecar")
    tiny = save_tiny_model(work / "tiny-llama")
    bundles = make_bundles(work / "bundles", tiny, {"pw-deception": "deception"})
    port = free_port()
    argv = [
        probewatch_exe(),
        "serve",
        "--model",
        str(tiny[1]),
        "--bundles",
        str(bundles[0]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        "-1",
        "--no-incidents",
        "--tls-cert",
        str(tls_dir / "tls.crt"),
        "--tls-key",
        str(tls_dir / "tls.key"),
        "--tls-client-ca",
        str(tls_dir / "ca.crt"),
        "--ready-file",
        str(work / "ready"),
    ]
    env = dict(os.environ, PROBEWATCH_HOME=str(work / "home"), PROBEWATCH_OFFLINE="1")
    service = Service("tls-sidecar", argv, work / "sidecar.log", env)
    try:

        def ready():
            assert service.alive(), f"probewatch serve exited:\n{service.output()}"
            return (work / "ready").exists()

        wait_for(ready, 90, "the TLS sidecar to start")
        yield port
    finally:
        service.stop()


def chart_probe_command(chartkit, port: int, tls_dir: Path) -> list[str]:
    values = chartkit.load_values(
        [chartkit.EXAMPLES / "values-standalone.yaml"], {"sidecar": {"grpcPort": port}, "tls": {"clientAuth": True}}
    )
    objs = {o["kind"]: o for _, o in chartkit.manifests(chartkit.render(values))}
    (sidecar,) = [c for c in objs["Deployment"]["spec"]["template"]["spec"]["containers"] if c["name"] == "probewatch"]
    cmd = sidecar["readinessProbe"]["exec"]["command"]
    assert cmd[0] == "probewatch-healthcheck"
    # In the image, probewatch-healthcheck is deploy/docker/healthcheck.py; the Secret is at /etc/probewatch/tls.
    return [sys.executable, str(HEALTHCHECK)] + [a.replace("/etc/probewatch/tls", str(tls_dir)) for a in cmd[1:]]


def test_chart_tls_probe_passes_against_a_tls_sidecar(chartkit, tls_sidecar, tls_dir):
    cmd = chart_probe_command(chartkit, tls_sidecar, tls_dir)
    assert cmd[cmd.index("--server-name") + 1] == SERVER_NAME and "--cert" in cmd
    ok = wait_for(
        lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=30).returncode == 0,
        60,
        "the chart's TLS health probe to pass",
    )
    assert ok


def test_tls_probe_fails_without_client_cert_or_with_wrong_name(chartkit, tls_sidecar, tls_dir):
    cmd = chart_probe_command(chartkit, tls_sidecar, tls_dir)
    i = cmd.index("--cert")
    no_client_cert = cmd[:i] + cmd[i + 4 :]  # drop --cert C --key K: mutual TLS must refuse
    assert subprocess.run(no_client_cert, capture_output=True, timeout=30).returncode == 1
    wrong_name = [("other.llm.svc" if a == SERVER_NAME else a) for a in cmd]
    assert subprocess.run(wrong_name, capture_output=True, timeout=30).returncode == 1
    plaintext = [sys.executable, str(HEALTHCHECK), "--address", f"127.0.0.1:{tls_sidecar}", "--timeout", "3"]
    assert subprocess.run(plaintext, capture_output=True, timeout=30).returncode == 1
