"""Regenerate the committed Python stubs from proto/probewatch/v1/*.proto.

    python -m probewatch.proto.generate            # rewrite the stubs in place (`make proto`)
    python -m probewatch.proto.generate --check    # exit 1 when the committed stubs drift

protoc writes imports for the protobuf package path (`from probewatch.v1 import monitor_pb2`),
but the stubs are installed under `probewatch.proto` (setup.py maps the proto/ folder there),
so the imports are rewritten to `probewatch.proto.probewatch.v1`. Everything else is protoc's
output byte for byte, which is what the drift test compares.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ("probewatch/v1/monitor.proto",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_IMPORT = re.compile(r"^from probewatch\.v1 import ", re.MULTILINE)


def generated_paths(root: Path) -> list[Path]:
    out = []
    for proto in PROTO_FILES:
        stem = root / proto[: -len(".proto")]
        out.extend(Path(str(stem) + suffix) for suffix in GENERATED_SUFFIXES)
    return out


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpc_tools) for every .proto into out_dir and fix the imports."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - dev dependency
        raise SystemExit("grpcio-tools is needed to regenerate stubs: pip install -e '.[dev]'") from exc
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed for {', '.join(PROTO_FILES)}")
    paths = generated_paths(out_dir)
    for path in paths:
        text = path.read_text()
        path.write_text(_IMPORT.sub("from probewatch.proto.probewatch.v1 import ", text))
    return paths


def drift(root: Path = PROTO_ROOT) -> list[str]:
    """Names of committed stubs that differ from a fresh generation (empty = in sync)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = generated_paths(root)
        return [
            c.relative_to(root).as_posix()
            for f, c in zip(fresh, committed)
            if not c.exists() or c.read_bytes() != f.read_bytes()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift; exit 1 when stubs differ")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift()
        if stale:
            print("stale generated stubs (run `make proto`): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("generated stubs are in sync with the .proto files")
        return 0
    for path in generate(PROTO_ROOT):
        print(f"wrote {path.relative_to(PROTO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
