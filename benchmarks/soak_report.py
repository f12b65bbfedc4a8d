"""The report of `probewatch bench soak`: the result JSON (with the attack mix's verdicts), the
human-readable lines and the plot (latency histogram, sidecar RSS over time with the kill).

A helper of `probewatch.benchmarks.soak` (no CLI contract of its own).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["lines", "plot", "result_of"]


def result_of(args: argparse.Namespace, soak: Any, command: str) -> dict[str, Any]:
    from probewatch.benchmarks.harness import percentile_ms

    totals, lat = soak.totals, soak.latencies()
    messages = sum(totals.sent.values())
    return {
        "benchmark": "soak",
        "command": command,
        "streams": args.streams,
        "duration_s": round(soak.elapsed, 1),
        "bad_fraction": args.bad_fraction,
        "rows_per_chunk": args.rows,
        "d_model": args.d_model,
        "window": args.window,
        "messages_sent": messages,
        "messages_per_s": round(messages / soak.elapsed, 1),
        "good_messages": totals.sent["good"],
        "bad_messages": totals.sent["bad"],
        "bad_by_kind": dict(sorted(totals.bad_kinds.items())),
        "latency_ms": {"p50": percentile_ms(lat, 0.5), "p99": percentile_ms(lat, 0.99), "n": len(lat)},
        "sidecar_rss_mb": soak.rss_report(),
        "rejected_by_code": soak.counters("rejected"),
        "client_errors_by_code": dict(sorted(totals.client_errors.items())),
        "dropped_by_reason": soak.counters("dropped"),
        "internal_errors": soak.counters("internal"),
        "generations": {
            "good_closed": totals.good_generations,
            "summaries": dict(totals.summaries),
            "missing_summary": len(totals.missing),
            "cut_by_kill": totals.cut_by_kill,
            "every_good_generation_got_a_summary": not totals.missing,
        },
        "reconnects": totals.reconnects,
        "kill_restart": soak.kill_info or None,
        **_attack_result(args, soak),
    }


def _attack_result(args: argparse.Namespace, soak: Any) -> dict[str, Any]:
    """What the attack mix cost the well-behaved streams, and the verdicts the issue asks for."""
    from probewatch.benchmarks.harness import percentile_ms

    phases = soak.latency_phases()
    p99 = {k: percentile_ms(v, 0.99) for k, v in phases.items()}
    ratio = round(p99["attack"] / p99["calm"], 2) if p99["calm"] and p99["attack"] is not None else None
    budget_mb = _byte_size_mb(args.queue_bytes)
    rss = soak.rss_report()
    start = rss.get("phase1_start", rss.get("start", float("nan")))
    kill = soak.kill_info
    return {
        "attacks": soak.attacks,
        "latency_by_phase_ms": {
            k: {"p50": percentile_ms(v, 0.5), "p99": p99[k], "n": len(v)} for k, v in phases.items()
        },
        "p99_attack_over_calm": ratio,
        "queue_byte_budget_mb": budget_mb,
        "rss_peak_growth_mb": round(rss["peak"] - start, 1),
        "verdicts": {
            "p99_ratio_at_most_1.5": ratio is not None and ratio <= 1.5,
            "rss_growth_under_byte_budget": rss["peak"] - start <= budget_mb,
            "well_behaved_unmonitored": len(soak.totals.missing),
            "early_alerts_lost_across_kill": (
                kill["early_alerts_received_before_kill"] - kill["their_incident_rows_after_restart"] if kill else None
            ),
        },
    }


def _byte_size_mb(text: str) -> float:
    from probewatch.arguments import byte_size

    return round(byte_size(text) / (1 << 20), 1)


def lines(args: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    import json

    lat, kill = result["latency_ms"], result["kill_restart"]
    return [
        f"soak: {args.streams} streams, {result['duration_s']:.0f}s, {result['messages_sent']} messages "
        f"({result['messages_per_s']}/s), {result['bad_messages']} bad",
        f"  send->score latency p50 {lat['p50']} ms, p99 {lat['p99']} ms over {lat['n']} chunks",
        f"  sidecar RSS {json.dumps(result['sidecar_rss_mb'])}",
        f"  rejected {json.dumps(result['rejected_by_code'])}; dropped {json.dumps(result['dropped_by_reason'])}",
        f"  generations {json.dumps(result['generations'])}",
        f"  kill -9 / restart {json.dumps(kill)}" if kill else "  (no kill cycle)",
        f"  well-behaved latency by phase {json.dumps(result['latency_by_phase_ms'])}; "
        f"p99 attack/calm {result['p99_attack_over_calm']}",
        f"  attacks {json.dumps(result['attacks'])}",
        f"  RSS peak growth {result['rss_peak_growth_mb']} MB; queue byte budget {result['queue_byte_budget_mb']} MB",
        f"  HTTP oversize metadata {json.dumps(result['http_oversize_metadata'])}",
        f"  verdicts {json.dumps(result['verdicts'])}",
        f"  report {args.out / 'report.json'}, plot {args.out / 'soak.png'}",
    ]


def plot(path: Path, latencies: list[float], rss: list[tuple[float, float, int]], kill: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if latencies:
        a.hist([1000 * x for x in latencies], bins=60, color="#4472c4")
        a.set_yscale("log")
    a.set_xlabel("send -> score latency (ms)")
    a.set_ylabel("chunks")
    a.set_title("latency")
    for phase, colour in ((1, "#4472c4"), (2, "#ed7d31")):
        points = [(t, r) for t, r, p in rss if p == phase]
        if points:
            b.plot(*zip(*points), color=colour, label=f"sidecar process {phase}")
    if kill:
        b.axvline(kill["killed_at_s"], color="red", linestyle="--", label="kill -9")
    b.set_xlabel("time (s)")
    b.set_ylabel("RSS (MB)")
    b.set_title("sidecar memory")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
