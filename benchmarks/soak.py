"""`probewatch bench soak`: the sidecar under sustained load with hostile input, and one crash.

N streams (threads, each its own gRPC connection) run generations against a `probewatch serve`
process on loopback for a bounded time: Open, chunks of residual rows, Close, with a share of
every stream's messages replaced by bad input (NaN rows, 3e38 rows, wrong widths, positions
sent twice, unknown generations, oversized ids, another model's fingerprint, invalid UTF-8). Each
stream keeps at most `--window` good chunks awaiting their scores (closed-loop load), so the
latency measured is what a client sees at that load, not an ever-growing backlog.

Halfway through, the sidecar is killed with SIGKILL and restarted on the same port and incident
store; the streams reconnect. Every early alert a client received before the kill must still be
in the store afterwards (written at alert time), and the generations open at the kill are
reported as `interrupted` by the new process.

Reported (`--json`: one object as the last stdout line; `--out DIR`: report.json + soak.png):
messages/s, p50/p99 latency from a chunk's send to the score update that covers it, the
sidecar's RSS over each phase, rejected messages by gRPC code (the sidecar's counter and what
the clients saw), dropped chunks, and whether every good generation got its summary (those cut
by the kill are counted apart).

With the attack mix (on unless `--no-attacks`; benchmarks/soak_attacks.py), misbehaving clients join
at 30% of the duration: an anonymous Health.Watch flood, a tenant sending multi-MiB chunks open-loop,
a tenant that never closes its generations and alerting generations closed with ReDoS text. The
well-behaved streams' p99 latency before the attacks (calm) and under them is compared (the ratio),
the sidecar runs with a byte budget for its scoring queue (`--queue-bytes`) and its RSS peak is
reported against it. Then (unless `--no-http`) `probewatch run` on the reference model serves chat
requests with oversize `metadata` / `user` fields beside plain ones: every one must come back
monitored.

This is a benchmark, not a test: it runs for `--duration` seconds and its figures depend on the
machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from probewatch.benchmarks.harness import add_common_args

# the sidecar's counters reported, by the label each is split by
METRICS = {
    "rejected": ("probewatch_rejected_messages_total", "code"),
    "dropped": ("probewatch_dropped_chunks_total", "reason"),
    "internal": ("probewatch_internal_errors_total", "component"),
}


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams (default 8)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load in total (default 30)")
    parser.add_argument("--bad-fraction", type=float, default=0.1, help="share of messages that are bad input")
    parser.add_argument("--rows", type=int, default=4, help="residual rows per chunk (default 4)")
    parser.add_argument("--chunks", type=int, default=16, help="chunks per generation (default 16)")
    parser.add_argument("--d-model", type=int, default=576, help="row width (default: the reference model's)")
    parser.add_argument("--window", type=int, default=8, help="good chunks awaiting scores per stream (default 8)")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill -9 / restart cycle")
    parser.add_argument(
        "--attacks",
        default="watch_flood,byte_heavy,never_close,redos",
        help="the attack mix, comma-separated (default: all four; '' or --no-attacks: none)",
    )
    parser.add_argument("--no-attacks", action="store_true", help="no attack mix")
    parser.add_argument("--attack-at", type=float, default=0.3, help="when the attacks start (share of --duration)")
    parser.add_argument("--attack-chunk-mb", type=float, default=8.0, help="chunk size of the byte-heavy tenant")
    parser.add_argument("--watch-flood", type=int, default=48, help="anonymous Health.Watch streams attempted")
    parser.add_argument(
        "--queue-bytes", default="256Mi", type=_checked_size, help="the sidecar's scoring-queue byte budget (256Mi)"
    )
    parser.add_argument(
        "--client-mb-per-s",
        type=float,
        default=32.0,
        help="the sidecar's --max-client-mb-per-s (default 32; the well-behaved streams send well under it)",
    )
    parser.add_argument("--no-http", action="store_true", help="skip the oversize-metadata phase via probewatch run")
    parser.add_argument("--http-requests", type=int, default=6, help="requests of each kind in the HTTP phase")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/soak"), help="report.json and soak.png (default runs/soak)"
    )


def _checked_size(text: str) -> str:
    """--queue-bytes as typed (it is passed on to `probewatch serve`), refused here if it is no size."""
    from probewatch.arguments import byte_size

    byte_size(text)
    return text


def main(args: argparse.Namespace) -> int:
    import tempfile

    from probewatch.benchmarks.harness import command_line, emit
    from probewatch.errors import ProbewatchError

    if args.streams < 1 or args.duration <= 0 or not 0 <= args.bad_fraction < 1 or args.window < 1:
        raise ProbewatchError("soak: --streams, --duration and --window must be positive, 0 <= --bad-fraction < 1")
    if not 0 < args.attack_at < 0.6:
        raise ProbewatchError("soak: --attack-at must be in (0, 0.6): calm first, the kill inside the attacks")
    with tempfile.TemporaryDirectory(prefix="probewatch-soak-") as tmp_name:
        soak = _Soak(args, Path(tmp_name))
        soak.run()
        http = None if args.no_http else _http_phase(args, Path(tmp_name))
    from probewatch.benchmarks.soak_report import lines, plot, result_of

    result = result_of(args, soak, command_line("soak"))
    result["http_oversize_metadata"] = http
    plot(args.out / "soak.png", soak.latencies(), soak.rss, soak.kill_info)
    emit(result, args.json, lines(args, result), report=args.out / "report.json")
    failed = soak.totals.missing or (http is not None and http["unmonitored"])
    return 1 if failed else 0


def _http_phase(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from probewatch.benchmarks.soak_http import oversize_metadata_phase

    return oversize_metadata_phase(args.model, tmp / "http", args.http_requests)


def _bundles(out: Path, d_model: int) -> list[Path]:
    """Two layers, two probes each; `soak-l<layer>-0` (max aggregation, threshold 3) alerts on hot rows:
    its weight is a unit direction, so a row of 5 * w scores 5 and noise rows score ~N(0, 1)."""
    from probewatch.benchmarks.soak_stream import FINGERPRINT
    from probewatch.probes.synthetic import write_synthetic_bundles

    return write_synthetic_bundles(
        out,
        d_model=d_model,
        layers=(1, 2),
        prefix="soak",
        weight_scale="unit",
        behaviours=("deception", "refusal"),
        aggregations=("max", "mean"),
        model_id="soak",
        fingerprint=FINGERPRINT,
        n_layers=4,
        threshold=3.0,
        version="soak",
    )


class _Soak:
    """One soak: the sidecar (restarted once after a kill -9 unless --no-kill) on a fixed port and
    incident store, the stream workers, and what was sampled on the way (RSS, metrics, the kill)."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        import socket

        from probewatch.benchmarks.soak_stream import FINGERPRINT, Totals
        from probewatch.probes import load_bundles

        self.args, self.tmp = args, tmp
        bundles = _bundles(tmp / "bundles", args.d_model)
        self.hot = {
            b.layer: b.tensors["weight"].numpy()
            for b in load_bundles(bundles)
            if b.manifest.aggregation.method == "max"
        }
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.db = tmp / "incidents.sqlite3"
        import secrets

        # tenants: the well-behaved streams and the attackers (per-client limits tell them apart)
        # the hoarding tenant has a token of its own: its full share must not starve the ReDoS tenant's opens
        self.good_token, self.attack_token, self.hoard_token = (secrets.token_hex(16) for _ in range(3))
        tokens = tmp / "tokens"
        tokens.write_text(f"{self.good_token}\n{self.attack_token}\n{self.hoard_token}\n")
        tokens.chmod(0o600)
        self.serve_args = ["--fingerprint", FINGERPRINT, "--port", str(port), "--metrics-port", "0"]
        self.serve_args += ["--incident-db", str(self.db), "--bundles", *map(str, bundles)]
        self.serve_args += ["--auth-token-file", str(tokens), "--queue-bytes", args.queue_bytes]
        # a table of 2048 open generations: the hoarding tenant reaches its quarter (512) within seconds
        self.serve_args += ["--max-open-generations", "2048", "--max-client-mb-per-s", str(args.client_mb_per_s)]
        self.attacks: dict[str, Any] | None = None  # what the attack process reports
        self.totals = Totals()
        self.rss: list[tuple[float, float, int]] = []  # (t, MB, phase)
        self.phase: dict[str, Any] = {"n": 1}
        self.kill_info: dict[str, Any] = {}
        self.metrics_phase1: dict[str, dict[str, float]] = {}
        self.metrics_end: dict[str, dict[str, float]] = {}
        self.rss_end = float("nan")
        self.elapsed = 0.0

    def _start(self, run: int):
        from probewatch.benchmarks.harness import SidecarProcess

        workdir = self.tmp / f"run{run}"
        workdir.mkdir()
        return SidecarProcess(self.serve_args, workdir)

    def run(self) -> None:
        from probewatch.benchmarks.soak_stream import StreamWorker, Target

        args = self.args
        self.sidecar = self._start(1)
        try:
            self.target = Target(self.sidecar.address, self.good_token)
            self.t0, self.p0 = time.monotonic(), time.perf_counter()
            deadline = self.t0 + args.duration
            workers = [StreamWorker(i, self.target, args, deadline, self.totals, self.hot) for i in range(args.streams)]
            for w in workers:
                w.start()
            attackers = self._attackers()
            time.sleep(self._warm_up_s())  # before the first RSS sample
            self.phase["rss_start"] = self.sidecar.rss_mb()
            self._watch(deadline)
            for w in workers:
                w.join(60)
            self.elapsed = time.monotonic() - self.t0
            self._attack_report(attackers)
            self.metrics_end = _scrape(self.sidecar.metrics_port)
            self.rss_end = self.sidecar.rss_mb()
        finally:
            self.sidecar.stop()

    def _attackers(self):
        """The attack mix in its own process (see soak_attacks), or None."""
        import subprocess

        import numpy as np

        args = self.args
        if args.no_attacks or not args.attacks:
            return None
        hot = self.tmp / "hot.npy"
        np.save(hot, self.hot[1])
        command = ["nice", "-n", "19", sys.executable, "-m", "probewatch.benchmarks.soak_attacks"]
        command += ["--address", self.target.address]
        command += [
            "--token",
            self.attack_token,
            "--hoard-token",
            self.hoard_token,
            "--d-model",
            str(args.d_model),
            "--hot",
            str(hot),
        ]
        command += ["--start-in", str(args.attack_at * args.duration - (time.monotonic() - self.t0))]
        command += ["--until", str(args.duration - (time.monotonic() - self.t0)), "--attacks", args.attacks]
        command += ["--chunk-mb", str(args.attack_chunk_mb), "--watch-streams", str(args.watch_flood)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    def _attack_report(self, proc) -> None:
        import json

        if proc is None:
            return
        out, _ = proc.communicate(timeout=60)
        lines = out.strip().splitlines()
        self.attacks = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"error": proc.returncode}

    def _kill_at(self) -> float | None:
        """Halfway; with attacks, halfway through them (so the kill happens under attack)."""
        args = self.args
        if args.no_kill:
            return None
        share = 0.5 if args.no_attacks or not args.attacks else (1 + args.attack_at) / 2
        return self.t0 + share * args.duration

    def latency_phases(self) -> dict[str, list[float]]:
        """The well-behaved streams' latencies (sorted) by when their chunk was sent: `calm` (after the
        warm-up, before the attacks) and `attack` (under attack, less the restarted process's warm-up)."""
        warm = self._warm_up_s()
        calm_only = self.args.no_attacks or not self.args.attacks
        attack_at = self.args.duration * (1.0 if calm_only else self.args.attack_at)
        # the kill's own window (from 1 s before it to the restarted process's warm-up) counts in neither
        gap = (float("inf"), float("inf"))
        if self.kill_info:
            killed = float(self.kill_info["killed_at_s"])
            gap = (killed - 1.0, killed + float(self.kill_info["restart_s"]) + warm)
        phases: dict[str, list[float]] = {"calm": [], "attack": []}
        for sent, latency in zip(self.totals.sent_at, self.totals.latencies):
            t = sent - self.p0
            if warm <= t < attack_at:
                phases["calm"].append(latency)
            elif t >= attack_at and not gap[0] <= t < gap[1]:
                phases["attack"].append(latency)
        return {k: sorted(v) for k, v in phases.items()}

    def _watch(self, deadline: float) -> None:
        """Until the deadline: sample the RSS every 0.5 s, and kill / restart the sidecar halfway."""
        from tqdm.auto import tqdm

        args = self.args
        kill_at = self._kill_at()
        with tqdm(total=int(args.duration), desc="soak", unit="s", file=sys.stderr) as bar:
            while time.monotonic() < deadline:
                time.sleep(0.5)
                now = time.monotonic()
                self.rss.append((now - self.t0, self.sidecar.rss_mb(), int(self.phase["n"])))
                bar.n = min(int(now - self.t0), int(args.duration))
                bar.set_postfix(msgs=sum(self.totals.sent.values()), rss=f"{self.rss[-1][1]:.0f}MB")
                if kill_at is not None and now >= kill_at and not self.kill_info:
                    self._kill_and_restart()
                if self.phase["n"] == 2 and "rss_start_2" not in self.phase and now >= self.phase["warm_at"]:
                    self.phase["rss_start_2"] = self.sidecar.rss_mb()  # after the same warm-up as phase 1
                bar.refresh()

    def _warm_up_s(self) -> float:
        return min(2.0, self.args.duration / 10)

    def _kill_and_restart(self) -> None:
        """SIGKILL the sidecar mid-load, restart it on the same port and store, and check that every
        early alert a client received before the kill has its incident row."""
        import signal

        from probewatch.server.store import IncidentStore

        self.metrics_phase1 = _scrape(self.sidecar.metrics_port)
        self.phase["rss_end_1"] = self.sidecar.rss_mb()
        alerts_before = list(self.totals.early_alert_incidents)
        self.target.generation += 1
        self.sidecar.proc.send_signal(signal.SIGKILL)
        self.sidecar.proc.wait(10)
        killed = time.monotonic()
        self.sidecar.stop()
        self.sidecar = self._start(2)
        restarted = time.monotonic()
        store = IncidentStore.open(self.db, readonly=True)
        try:
            found = sum(1 for i in alerts_before if _incident_exists(store, i))
            interrupted = len(store.find(generation_status="interrupted", limit=1_000_000))
        finally:
            store.close()
        self.kill_info = {
            "killed_at_s": round(killed - self.t0, 2),
            "restart_s": round(restarted - killed, 2),
            "early_alerts_received_before_kill": len(alerts_before),
            "their_incident_rows_after_restart": found,
            "interrupted_rows_after_restart": interrupted,
        }
        self.phase.update(n=2, warm_at=time.monotonic() + self._warm_up_s())

    def latencies(self) -> list[float]:
        return sorted(self.totals.latencies)

    def rss_report(self) -> dict[str, float]:
        """Start, end and growth of the sidecar's RSS per process (MB), and the peak."""
        phase, end = self.phase, self.rss_end
        if self.kill_info:
            start_2 = phase.get("rss_start_2", end)
            report = {
                "phase1_start": round(phase["rss_start"], 1),
                "phase1_end": round(phase["rss_end_1"], 1),
                "phase1_growth": round(phase["rss_end_1"] - phase["rss_start"], 1),
                "phase2_start": round(start_2, 1),
                "phase2_end": round(end, 1),
                "phase2_growth": round(end - start_2, 1),
            }
        else:
            report = {
                "start": round(phase["rss_start"], 1),
                "end": round(end, 1),
                "growth": round(end - phase["rss_start"], 1),
            }
        report["peak"] = round(max((r for _, r, _ in self.rss), default=float("nan")), 1)
        return report

    def counters(self, bucket: str) -> dict[str, float]:
        """A counter summed over both sidecar processes, zeros left out."""
        a, b = self.metrics_phase1.get(bucket, {}), self.metrics_end.get(bucket, {})
        return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in sorted(set(a) | set(b)) if a.get(k, 0.0) + b.get(k, 0.0)}


def _scrape(port: int) -> dict[str, dict[str, float]]:
    from probewatch.benchmarks.harness import scrape_metrics

    samples = scrape_metrics(port, dict(METRICS.values()))
    return {bucket: samples[name] for bucket, (name, _label) in METRICS.items()}


def _incident_exists(store: Any, incident_id: int) -> bool:
    from probewatch.server.store import IncidentNotFoundError

    try:
        store.get(incident_id)
        return True
    except IncidentNotFoundError:
        return False
