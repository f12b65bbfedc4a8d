"""The layering the folders promise, pinned: every import in every module (lazy ones inside functions too).

- server/client/ runs inside someone's inference server: it imports nothing of the sidecar, the
  store, the review app, the embedded endpoint or the local stack.
- server/sidecar/ and server/store/ never import the client side.
- The sidecar's data plane (engine, registry, alerts, work items) knows no gRPC: only the servicer,
  stream state, admission, status mapping and process wiring do.
- probes/ imports neither training/ nor server/; proto/ imports only core; core imports none of them.
- Nothing imports the CLI but the CLI.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> the dotted package it installs as (setup.py)
PACKAGES = {
    "probewatch": "probewatch",
    "server": "probewatch.server",
    "probes": "probewatch.probes",
    "training": "probewatch.training",
    "proto": "probewatch.proto",
    "benchmarks": "probewatch.benchmarks",
}
DATA_PLANE = (
    "engine",
    "generations",
    "alerts",
    "specs",
    "work",
    "updates",
    "errors",
    "incident_queue",
    "fair_queue",
    "pacing",
    "memory",
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGES[parts[0]], *parts[1:]])


def imports_of(source: str, module: str, is_package: bool = False) -> Iterator[str]:
    """Every module `source` imports, relative imports resolved against `module`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "_pb2" not in p.name)


def _all_imports() -> dict[str, set[str]]:
    out = {}
    for folder in PACKAGES:
        for path in _sources(folder):
            name = _module_name(path)
            out[name] = set(imports_of(path.read_text(), name, path.name == "__init__.py"))
    return out


IMPORTS = _all_imports()


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(importer_prefixes: tuple[str, ...], forbidden: tuple[str, ...], exempt: tuple[str, ...] = ()):
    return sorted(
        f"{module} imports {target}"
        for module, targets in IMPORTS.items()
        if _under(module, *importer_prefixes) and not _under(module, *exempt)
        for target in targets
        if _under(target, *forbidden)
    )


SERVER_NOT_CLIENT = tuple(f"probewatch.server.{p}" for p in ("sidecar", "store", "review", "inference", "local")) + (
    "probewatch.training",
    "probewatch.benchmarks",
    "probewatch.cli",
)
RULES = {
    "client imports nothing of the sidecar side": (("probewatch.server.client",), SERVER_NOT_CLIENT, ()),
    "sidecar and store never import the client": (
        ("probewatch.server.sidecar", "probewatch.server.store"),
        (
            "probewatch.server.client",
            "probewatch.server.review",
            "probewatch.server.inference",
            "probewatch.server.local",
        ),
        (),
    ),
    "probes import neither training nor server": (
        ("probewatch.probes",),
        ("probewatch.training", "probewatch.server", "probewatch.benchmarks", "probewatch.cli"),
        (),
    ),
    "proto imports only core": (
        ("probewatch.proto",),
        ("probewatch.server", "probewatch.training", "probewatch.probes", "probewatch.benchmarks", "probewatch.cli"),
        (),
    ),
    "nothing imports the cli but the cli": (("probewatch",), ("probewatch.cli",), ("probewatch.cli",)),
    "the sidecar's data plane knows no gRPC": (
        tuple(f"probewatch.server.sidecar.{m}" for m in DATA_PLANE),
        ("grpc", "grpc_health", "grpc_reflection"),
        (),
    ),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_layering(rule: str) -> None:
    assert violations(*RULES[rule]) == []


def test_core_imports_no_process_folder() -> None:
    """probewatch/ (core: models, data, capture, envs, ...) is what every side shares; it imports none of them."""
    core = [_module_name(p) for p in _sources("probewatch") if not _under(_module_name(p), "probewatch.cli")]
    bad = sorted(
        f"{m} imports {t}"
        for m in core
        for t in IMPORTS[m]
        if _under(t, "probewatch.server", "probewatch.training", "probewatch.benchmarks", "probewatch.cli")
    )
    assert len(core) > 10 and bad == []


def test_the_checker_sees_lazy_and_relative_imports() -> None:
    """The rules above can fail: a function-level import and a relative one are both found."""
    source = "def f():\n    from probewatch.server.sidecar.engine import ScoringEngine\nfrom ..store import x\n"
    found = set(imports_of(source, "probewatch.server.client.core"))
    assert "probewatch.server.sidecar.engine" in found
    assert "probewatch.server.store.x" in found
    assert _under("probewatch.server.sidecar.engine", *SERVER_NOT_CLIENT)


def test_every_process_folder_is_seen() -> None:
    for prefix in (
        "probewatch.server.client",
        "probewatch.server.sidecar",
        "probewatch.server.store",
        "probewatch.probes",
        "probewatch.proto",
        "probewatch.cli",
        "probewatch.benchmarks",
    ):
        assert any(_under(m, prefix) for m in IMPORTS), prefix
