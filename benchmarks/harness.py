"""What the benchmarks share: the common flags, a sidecar in its own process, /metrics scraping,
timing helpers and the one way a result comes out.

The contract every benchmark module follows (the registry in `probewatch.cli.bench_cmd` relies on it):
`add_cli_args(parser)` adds all its flags (`add_common_args` first: --model, --json) and
`main(args) -> int` runs it and ends with `emit`: the human lines (stdout; stderr under --json),
the JSON report file if the benchmark writes one, and under --json the result as the last stdout line.

Only the standard library is imported at module level: `probewatch --help` imports every benchmark.
"""

from __future__ import annotations

import argparse
import json
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from probewatch.arguments import add_json_arg, add_model_arg, print_json

T = TypeVar("T")


# -- the common flags and the output --------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser) -> None:
    """--model and --json: every `probewatch bench` subcommand has both."""
    add_model_arg(parser)
    add_json_arg(parser)


def command_line(name: str) -> str:
    """The command as typed (`probewatch bench <name> ...`), for the report."""
    return " ".join(["probewatch bench", name, *sys.argv[3:]])


def emit(result: dict[str, Any], as_json: bool, lines: Sequence[str], report: Path | None = None) -> None:
    """The human-readable lines (to stderr under --json, so stdout stays one JSON line), the report
    file (`report`, written atomically) and under --json the result as the last stdout line."""
    if report is not None:
        from probewatch.jsonio import write_json_atomic

        report.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(report, result)
    for line in lines:
        print(line, file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print_json(result)


def save_plot(fig: Any, out: Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure next to the JSON report `out` (same name, .png), close it, return its path."""
    import matplotlib.pyplot as plt

    path = out.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def finish_drift_check(
    name: str, key: str, noun: str, results: list[dict[str, Any]], lines: list[str], args: Any
) -> int:
    """How the drift checks (`bench selection`, `bench threshold`) end: a count of what `changed`, the report
    (`results` under `key`) and exit 1 under `--check` when anything changed."""
    changed = [r["probe_id"] for r in results if r["changed"]]
    lines.append(
        f"{len(results) - len(changed)} of {len(results)} {noun} unchanged"
        + (f"; changed: {changed}" if changed else "")
    )
    emit({"command": command_line(name), key: results, "changed": changed}, args.json, lines, args.out)
    return 1 if args.check and changed else 0


# -- timing ----------------------------------------------------------------------------------------
def rotated(items: Sequence[T], rep: int) -> list[T]:
    """`items` starting at position rep (mod len): alternating configurations in a rotating order
    so none always runs right after the same other one (drift and order effects hit all equally)."""
    k = rep % len(items)
    return [*items[k:], *items[:k]]


def timed(fn: Callable[[], Any]) -> float:
    """Seconds `fn()` takes (perf_counter)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rates(times: dict[Any, list[float]], units: Callable[[Any], float]) -> tuple[dict, dict, dict]:
    """(median seconds, units/s at the median, units/s of the best run) per key; the best run is
    the least disturbed one, robust on a shared machine."""
    medians = {k: statistics.median(v) for k, v in times.items()}
    return medians, {k: units(k) / t for k, t in medians.items()}, {k: units(k) / min(v) for k, v in times.items()}


def percentile_ms(sorted_seconds: Sequence[float], q: float) -> float | None:
    """The q-quantile (nearest rank below) of sorted durations in seconds, in ms (2 decimals)."""
    if not sorted_seconds:
        return None
    return round(1000 * sorted_seconds[min(len(sorted_seconds) - 1, int(q * len(sorted_seconds)))], 2)


# -- processes ---------------------------------------------------------------------------------------
class SidecarProcess:
    """`probewatch serve ...` as a subprocess on ephemeral ports; `address` (and `metrics_port`) once
    ready. `args` are serve's flags after --host/--port 0/--ready-file (a later --port wins)."""

    def __init__(self, args: list[str], workdir: Path, timeout_s: float = 120.0) -> None:
        self.ready_file = workdir / "sidecar-ready.json"
        self.log_file = workdir / "sidecar.log"
        cmd = [sys.executable, "-m", "probewatch.cli.main", "serve", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--ready-file", str(self.ready_file), *args]
        self._log = open(self.log_file, "w")  # noqa: SIM115 - held open for the child process's lifetime
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"sidecar did not start (exit {self.proc.returncode}):\n{self.log_file.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        time.sleep(0.05)
        info = json.loads(self.ready_file.read_text())
        self.address: str = info["address"]
        self.metrics_port: int = info["metrics_port"]

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> SidecarProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_port(proc: subprocess.Popen, what: str, timeout_s: float = 30.0) -> int:
    """The port a helper process prints on its first stdout line; a bounded wait with a clear error."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        raise SystemExit(f"{what} did not report its port within {timeout_s:g}s (exit code {proc.poll()})")
    return int(line)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux /proc); NaN when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# -- /metrics ---------------------------------------------------------------------------------------
def scrape_metrics(port: int, families: dict[str, str], host: str = "127.0.0.1") -> dict[str, dict[str, float]]:
    """Samples of the named metrics from `http://host:port/metrics`: {metric name: {label value: value}},
    keyed by the label `families[name]` names (every named metric present, possibly empty)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {name: {} for name in families}
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in families:
                out[sample.name][sample.labels[families[sample.name]]] = float(sample.value)
    return out
