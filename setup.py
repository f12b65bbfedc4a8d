"""Package discovery for the project's layout (metadata lives in pyproject.toml).

The top-level folders probes/, training/, server/, proto/ and benchmarks/ install as probewatch.probes,
probewatch.training, probewatch.server, probewatch.proto and probewatch.benchmarks; every sub-folder with an
__init__.py below them is found here, so adding a subpackage needs no packaging edit.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {
    "probewatch": "probewatch",
    "probewatch.probes": "probes",
    "probewatch.training": "training",
    "probewatch.server": "server",
    "probewatch.proto": "proto",
    "probewatch.benchmarks": "benchmarks",
}


def _packages() -> list[str]:
    found = []
    for package, folder in ROOTS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            found.append(".".join([package, *rel.parts]) if rel.parts else package)
    return sorted(set(found))


setup(packages=_packages(), package_dir=ROOTS)
