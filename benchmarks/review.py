"""`probewatch bench review`: how fast the review queue answers with many incidents in the store.

Fills a fresh store with `--incidents` incidents (default 10,000) written through the store API
exactly as sidecars write them (4 probes, a response of ~400 characters, 64 scored tokens and every
probe's scores per generation), starts the review app on loopback and times real HTTP requests
(median, p95, max over `--repeats`): the queue by generation (first page, a filtered page, a page
deep in the queue, sorted by margin, a text search, "assigned to me", the grouped and the
per-incident JSON APIs), a generation page, an incident page, /metrics, a filtered export, and the
review posts: "save & next" (verdict for every probe + resolve + the next generation, one post per
generation) and a bulk label + resolve of 50 generations; and the first incident page of a freshly
started app (the catalog of `probewatch review`, whose tokenizers load in the background meanwhile:
incidents carry their token texts, as sidecars store them, so the page must not wait; budget 500 ms).
The issue's budget: the queue answers in under 300 ms with 10,000 incidents. Results go to `--out` (JSON) with a bar chart next to it.

A benchmark, not a test: it writes thousands of rows and times them on a possibly busy machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from probewatch.benchmarks.harness import add_common_args, save_plot

BUDGET_MS = 300.0
FIRST_PAGE_BUDGET_MS = 500.0
PROBES = (
    ("deception-lr", "deception", 1.2),
    ("refusal-lr", "refusal", 2.0),
    ("alignment-faking-lr", "alignment_faking", 1.5),
    ("deception-sae", "deception", 0.8),
)
WORDS = (
    "the",
    "refund",
    "policy",
    "allows",
    "returns",
    "within",
    "thirty",
    "days",
    "of",
    "purchase",
    "and",
    "never",
    "after",
    "that",
    "period",
)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    parser.add_argument("--incidents", type=int, default=10_000, help="incidents in the store (default 10000)")
    parser.add_argument(
        "--db",
        default=None,
        metavar="PATH_OR_URL",
        help="an EMPTY store to fill (e.g. a new PostgreSQL database URL; default: a temporary SQLite file)",
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed requests per endpoint (default 30)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-review.json"), help="JSON report (+ .png)")


def _seed(store, n: int, progress: bool) -> float:
    """Write n incidents like sidecars do; returns the writes per second."""
    from tqdm.auto import tqdm

    from probewatch.server.store import Incident, probe_context

    rnd = random.Random(0)
    now = dt.datetime.now(dt.timezone.utc)
    started = time.perf_counter()
    written, k = 0, 0
    with tqdm(total=n, desc="writing incidents", unit="incident", disable=not progress) as bar:
        while written < n:
            prompt_length = 40
            tokens = [[prompt_length + i, rnd.randrange(49152)] for i in range(64)]
            texts = [[p, " " + rnd.choice(WORDS)] for p, _ in tokens]
            context: dict[str, dict[str, Any]] = {}
            for probe, behaviour, threshold in PROBES:
                base = rnd.gauss(threshold - 0.5, 1.0)
                scores = [[p, round(base + math.sin(p / 5.0), 4)] for p, _ in tokens]
                top = max(s for _, s in scores)
                context[probe] = probe_context(
                    behaviour=behaviour,
                    score=top,
                    threshold=threshold,
                    n_tokens=len(scores),
                    aggregation="max",
                    token_selection="response",
                    layer=15,
                    version="3",
                    token_scores=scores,
                )
            flagged = [p for p, info in context.items() if info["flagged"]] or [PROBES[0][0]]
            created = (now - dt.timedelta(seconds=(n - written) * 30)).isoformat()
            response = " ".join(rnd.choice(WORDS) for _ in range(70))
            for probe in flagged[: n - written]:
                info = context[probe]
                store.record(
                    Incident(
                        generation_id=f"bench-{k}",
                        probe=probe,
                        behaviour=info["behaviour"],
                        score=info["score"],
                        threshold=info["threshold"],
                        model_fingerprint="pwfp1:" + ("ab" if k % 3 else "cd") * 16,
                        bundle_version="3",
                        aggregation="max",
                        token_scores=info["token_scores"],
                        prompt=f"<|im_start|>user\nquestion {k}<|im_end|>\n<|im_start|>assistant\n",
                        response=response,
                        metadata={"tenant": f"t{k % 7}"},
                        prompt_length=prompt_length,
                        tokens=tokens,
                        token_texts=texts,
                        context=context,
                        created_at=created,
                    )
                )
                written += 1
                bar.update(1)
            k += 1
    return n / (time.perf_counter() - started)


def _review_some(store, ids: list[int]) -> None:
    """A realistic mix of review states: a tenth claimed, labelled and partly resolved."""
    rnd = random.Random(1)
    for i in rnd.sample(ids, max(1, len(ids) // 10)):
        verdict = rnd.choice(("true_positive", "false_positive", "unsure"))
        store.label(i, rnd.choice(("alice", "bob", "carol")), verdict)
        if rnd.random() < 0.5:
            store.resolve(i, "alice")


def _time(client, path: str, repeats: int) -> dict:
    for _ in range(3):  # warm-up: connection, template compilation, SQLite page cache
        response = client.get(path)
        response.raise_for_status()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
    samples.sort()
    return {
        "path": path,
        "median_ms": statistics.median(samples),
        "p95_ms": samples[min(len(samples) - 1, math.ceil(0.95 * len(samples)) - 1)],
        "max_ms": samples[-1],
        "bytes": len(response.content),
    }


def _time_posts(client, posts: list[tuple[str, dict]]) -> dict:
    """Each (path, form) posted once (a review changes the store: every sample is another generation)."""
    samples = []
    for path, form in posts:
        t0 = time.perf_counter()
        response = client.post(path, data=form)
        samples.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 303 or "error=" in response.headers.get("location", ""):
            raise RuntimeError(f"POST {path}: {response.status_code} {response.headers.get('location', '')[:200]}")
    samples.sort()
    return {
        "path": f"POST {posts[0][0]} (x{len(posts)})",
        "median_ms": statistics.median(samples),
        "p95_ms": samples[min(len(samples) - 1, math.ceil(0.95 * len(samples)) - 1)],
        "max_ms": samples[-1],
        "bytes": 0,
    }


def _review_posts(client, repeats: int) -> dict[str, dict]:
    """ "save & next" on `repeats` unresolved generations, then bulk label + resolve of 50, three times."""
    import re

    rows = client.get("/api/generations", params={"status": "open", "per_page": repeats + 150}).json()["rows"]
    gens = [r["generation_id"] for r in rows]
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(f"/generations/{gens[0]}").text)
    if found is None:
        raise RuntimeError("the generation page carries no CSRF token")
    csrf = found.group(1)
    queue = "status=open"
    save_next = [
        (f"/generations/{g}", {"csrf": csrf, "label_all": "false_positive", "do": "next", "queue": queue})
        for g in gens[:repeats]
    ]
    rest = gens[repeats:]
    bulk = [
        ("/bulk", {"csrf": csrf, "generation": rest[k * 50 : (k + 1) * 50], "label": "true_positive", "resolve": "1"})
        for k in range(min(3, len(rest) // 50))
    ]
    out = {"save & next (POST, every probe)": _time_posts(client, save_next)}
    if bulk:
        out["bulk label + resolve 50 (POST)"] = _time_posts(client, bulk)
    return out


def _plot(result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["endpoints"])
    med = [result["endpoints"][n]["median_ms"] for n in names]
    p95 = [result["endpoints"][n]["p95_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    y = range(len(names))
    ax.barh(y, p95, color="#f4c7c3", label="p95")
    ax.barh(y, med, color="#1f77b4", label="median")
    ax.axvline(BUDGET_MS, color="#d62728", linestyle="--", label=f"budget {BUDGET_MS:.0f} ms")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("response time (ms), real HTTP on loopback")
    ax.set_title(f"probewatch review with {result['incidents']} incidents ({result['backend']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return save_plot(fig, out)


def _first_incident_page(store, incident_id: int) -> float:
    """ms from creating a fresh app (as `probewatch review` does: every known bundle, tokenizers warming
    in the background) to its first incident page answered over HTTP."""
    import httpx

    from probewatch.server.inference.server_thread import HTTPServerThread
    from probewatch.server.review.app import create_review_app
    from probewatch.server.review.auth import AuthConfig
    from probewatch.server.review.catalog import Catalog

    started = time.perf_counter()
    app = create_review_app(store, AuthConfig(local_reviewer="bench"), Catalog(), metrics_cache_s=0.0)
    server = HTTPServerThread(app, "127.0.0.1", 0, proxy_headers=False).start()
    try:
        response = httpx.get(f"{server.url}/incidents/{incident_id}", timeout=60)
        response.raise_for_status()
        return (time.perf_counter() - started) * 1000
    finally:
        server.stop()


def main(args: argparse.Namespace) -> int:
    import logging

    import httpx

    from probewatch.benchmarks.harness import command_line, emit
    from probewatch.errors import ProbewatchError
    from probewatch.server.inference.server_thread import HTTPServerThread
    from probewatch.server.review.app import create_review_app
    from probewatch.server.review.auth import AuthConfig
    from probewatch.server.store import IncidentStore

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per timed request would bury the table
    progress = not args.json and sys.stderr.isatty()
    with tempfile.TemporaryDirectory(prefix="probewatch-bench-review-") as tmp:
        store = IncidentStore.open(args.db or Path(tmp) / "incidents.sqlite3")
        try:
            if store.count():
                raise ProbewatchError(f"--db {store.path} is not empty: the benchmark fills a fresh store")
            writes_per_s = _seed(store, args.incidents, progress)
            ids = [int(r.id or 0) for r in store.find(limit=args.incidents)]
            _review_some(store, ids)
            first_page_ms = _first_incident_page(store, ids[len(ids) // 3])
            app = create_review_app(store, AuthConfig(local_reviewer="bench"), metrics_cache_s=0.0)
            server = HTTPServerThread(app, "127.0.0.1", 0, proxy_headers=False).start()
            try:
                probe = PROBES[0][0]
                middle = store.get(ids[len(ids) // 2])
                paths = {
                    "queue, first page": "/",
                    "queue, open + probe + score filter": f"/?status=open&probe={probe}&score_min=1.5",
                    "queue, deep page": f"/?page={max(1, len(ids) // 250)}",
                    "queue, sorted by margin": "/?status=unresolved&sort=margin_desc",
                    "queue, text search": "/?q=question+12",
                    "queue, assigned to me": "/?status=unresolved&assignee=alice",
                    "queue JSON API (generations)": "/api/generations?status=unresolved",
                    "queue JSON API (incidents)": "/api/incidents?status=unresolved&q=refund",
                    "generation page": f"/generations/{middle.generation_id}",
                    "incident page": f"/incidents/{middle.id}",
                    "/metrics": "/metrics",
                    f"export, probe {probe} (JSONL)": f"/export?format=jsonl&probe={probe}&since=1h",
                }
                with httpx.Client(base_url=server.url, timeout=60) as client:
                    endpoints = {name: _time(client, path, args.repeats) for name, path in paths.items()}
                    endpoints.update(_review_posts(client, args.repeats))
            finally:
                server.stop()
            backend = store.backend
        finally:
            store.close()
    queue = [v for k, v in endpoints.items() if k.startswith("queue")]
    result = {
        "benchmark": "review",
        "command": command_line("review"),
        "incidents": args.incidents,
        "backend": backend,
        "repeats": args.repeats,
        "writes_per_s": writes_per_s,
        "budget_ms": BUDGET_MS,
        "endpoints": endpoints,
        "queue_worst_median_ms": max(v["median_ms"] for v in queue),
        "queue_worst_p95_ms": max(v["p95_ms"] for v in queue),
        "queue_within_budget": all(v["p95_ms"] < BUDGET_MS for v in queue),
        "first_incident_page_ms": first_page_ms,
        "first_incident_page_within_budget": first_page_ms <= FIRST_PAGE_BUDGET_MS,
    }
    png = _plot(result, args.out)
    lines = [
        f"review queue with {args.incidents} incidents ({backend}; {writes_per_s:.0f} incident writes/s while filling):"
    ]
    for name, v in endpoints.items():
        lines.append(
            f"  {name:38} median {v['median_ms']:7.1f} ms   p95 {v['p95_ms']:7.1f} ms   max {v['max_ms']:7.1f} ms"
        )
    verdict = "within" if result["queue_within_budget"] else "OVER"
    lines.append(f"  queue p95 worst {result['queue_worst_p95_ms']:.1f} ms: {verdict} the {BUDGET_MS:.0f} ms budget")
    first = "within" if result["first_incident_page_within_budget"] else "OVER"
    lines.append(
        f"  {'first incident page after start':38} {first_page_ms:7.1f} ms: {first} the {FIRST_PAGE_BUDGET_MS:.0f} ms budget"
    )
    lines.append(f"  report {args.out}, plot {png}")
    emit(result, args.json, lines, report=args.out)
    return 0 if result["queue_within_budget"] and result["first_incident_page_within_budget"] else 1
