"""A real Prometheus scraping a real sidecar: every dashboard query and alert rule against live data.

The test starts, all on loopback ports it picked free:
  * `probewatch serve` (a subprocess, exactly the container's entrypoint) on a tiny random-init
    Llama saved as a model folder, with three bundles (deception, refusal, alignment_faking) whose
    thresholds make every generation alert, and an alert webhook pointing at a local receiver that
    accepts every other delivery and rejects the rest (so both webhook outcomes are counted);
  * the attach client (the sidecar's own client API) on the same tiny model in this process, its
    probewatch_client_* metrics served over HTTP the way `probewatch run` serves them;
  * `probewatch review` on the sidecar's incident store (a reviewer labels a few incidents through
    its API);
  * Prometheus (Debian's package) with a generated config that scrapes the three as job="probewatch",
    job="probewatch-inference" and job="probewatch-review" every second and loads
    deploy/prometheus/probewatch-rules.yaml.
Then it streams 30 generations through the attach client, plus, on a raw gRPC stream, one chunk
for an unknown generation (rejected NOT_FOUND) and one generation closed with client-dropped
chunks, and asserts:
  * every PromQL query of the dashboard (template variables substituted as Grafana does) parses
    and returns data, with the values that matter checked (monitoring LIVE, clients connected,
    alert counts, bundle fingerprint, heatmap buckets);
  * every variable query finds its label values;
  * Prometheus loaded every rule and evaluates it without error; every metric selector inside
    every rule returns series; the alert expressions that this traffic must trigger return data
    (alert rates, dropped chunks, rejections, webhook failures) and show up in ALERTS as pending,
    and those that must stay quiet (sidecar down/absent, no scores, client off, ...) are empty.
Every process is stopped in fixture finalizers, also on failure. Skips only when Prometheus is
not installed (`make test` installs it through deploy/scripts/ensure-prometheus.sh when root).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.components import missing
from tests.deploy.conftest import DASHBOARD, REPO, RULES_FILE
from tests.deploy.tiny import Service, free_port, make_bundles, save_tiny_model, wait_for

pytestmark = pytest.mark.timeout(300)

GENERATIONS = 30
SCRAPE = "1s"
RATE_INTERVAL = "2m"  # what Grafana's $__rate_interval becomes here (covers the whole traffic)
RANGE = "1h"  # $__range
BEHAVIOURS = {"pw-deception": "deception", "pw-refusal": "refusal", "pw-af": "alignment_faking"}
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"

# Alert expressions this traffic must make true, and those that must stay empty. The rest
# (latency p99, queue) depend on the machine's load: their selectors and parsing are checked.
MUST_FIRE = {
    "ProbewatchDeceptionAlertRateHigh",
    "ProbewatchRefusalAlertRateHigh",
    "ProbewatchAlignmentFakingAlertRateHigh",
    "ProbewatchDroppingChunks",
    "ProbewatchRejectingMessages",
    "ProbewatchWebhookFailing",
    "ProbewatchReviewBacklogGrowing",  # 91 open incidents within a minute: above 50 and growing
}
MUST_BE_QUIET = {
    "ProbewatchSidecarDown",
    "ProbewatchSidecarAbsent",
    "ProbewatchNoScores",
    "ProbewatchClientMonitoringOff",
    "ProbewatchClientDroppingChunks",
    "ProbewatchClientCaptureSelfCheckFailed",
    "ProbewatchIncidentStoreErrors",
    "ProbewatchInternalErrors",
    "ProbewatchAbortedGenerations",
    "ProbewatchQueueNearFull",
    "ProbewatchReviewStale",
    "ProbewatchReviewedPrecisionLow",
    "ProbewatchReviewStoreDown",
}
REVIEW_TOKEN = "e2e-reviewer-token-0123456789"


# ---------------------------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    exe = shutil.which("prometheus")
    if exe is None or shutil.which("promtool") is None:
        missing(
            "Prometheus is not installed: Debian's `prometheus` package provides prometheus and promtool "
            "(`make test` installs it via deploy/scripts/ensure-prometheus.sh when run as root)"
        )
    return exe


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prometheus-e2e")


@pytest.fixture(scope="module")
def tiny_model(workdir):
    return save_tiny_model(workdir / "tiny-llama")


@pytest.fixture(scope="module")
def bundles(workdir, tiny_model) -> list[Path]:
    return make_bundles(workdir / "bundles", tiny_model, BEHAVIOURS)


@pytest.fixture(scope="module")
def webhook_receiver():
    """Accepts every other alert POST (200) and rejects the rest (400: not retried -> 'failed')."""
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append(json.loads(body or b"{}"))
            self.send_response(200 if len(received) % 2 else 400)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/probewatch", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def sidecar(workdir, tiny_model, bundles, webhook_receiver, prometheus_bin):
    """`probewatch serve` in a subprocess, like the container's entrypoint."""
    _, folder, _ = tiny_model
    port, metrics_port = free_port(), free_port()
    env = dict(
        os.environ,
        PROBEWATCH_HOME=str(workdir / "home"),
        PROBEWATCH_INCIDENT_DB=str(workdir / "incidents.sqlite3"),
        PROBEWATCH_OFFLINE="1",
    )
    env.pop("PROBEWATCH_DISABLE", None)
    argv = [
        str(Path(sys.executable).parent / "probewatch"),
        "serve",
        "--model",
        str(folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--webhook",
        webhook_receiver[0],
        "--drift-window",  # the traffic's 30 generations fill it: PSI and alert-rate ratio are exported
        "20",
    ]
    for b in bundles:
        argv += ["--bundles", str(b)]
    service = Service("sidecar", argv, workdir / "sidecar.log", env)
    try:
        address = f"127.0.0.1:{port}"

        def serving():
            assert service.alive(), f"probewatch serve exited:\n{service.output()}"
            return (
                subprocess.run(
                    [sys.executable, str(HEALTHCHECK), "--address", address, "--timeout", "1"],
                    capture_output=True,
                    timeout=20,
                ).returncode
                == 0
            )

        wait_for(serving, 90, "the sidecar's gRPC health service to report SERVING")
        yield {"address": address, "metrics_port": metrics_port, "service": service}
    finally:
        service.stop()


@pytest.fixture(scope="module")
def client(tiny_model, sidecar):
    """The attach client on the tiny model; its metrics served like `probewatch run` serves them."""
    from probewatch.metrics_http import serve_metrics
    from probewatch.server.client.hf_attach import attach
    from probewatch.server.client.metrics import ClientMetrics

    model, _, _ = tiny_model
    metrics = ClientMetrics()
    port = free_port()
    http_server, _ = serve_metrics(metrics.registry, port, host="127.0.0.1")
    monitor = attach(model, None, sidecar=sidecar["address"], metrics=metrics, wait_s=30)
    try:
        assert monitor.up, "the attach client did not connect to the sidecar"
        yield {"monitor": monitor, "model": model, "metrics_port": port}
    finally:
        monitor.detach()
        http_server.shutdown()
        http_server.server_close()


@pytest.fixture(scope="module")
def prometheus_port() -> int:
    """Chosen before the review app starts: its probe cards read drift from this Prometheus."""
    return free_port()


@pytest.fixture(scope="module")
def review_app(workdir, sidecar, prometheus_port):
    """`probewatch review` on the sidecar's SQLite store (a reviewer authenticates with a token)."""
    tokens = workdir / "review-tokens"
    tokens.write_text(f"e2e-reviewer:{REVIEW_TOKEN}\n")
    port = free_port()
    argv = [
        str(Path(sys.executable).parent / "probewatch"),
        "review",
        "--db",
        str(workdir / "incidents.sqlite3"),
        "--port",
        str(port),
        "--token-file",
        str(tokens),
        "--metrics-cache",
        "0",
        "--prometheus-url",
        f"http://127.0.0.1:{prometheus_port}",
    ]
    service = Service("review", argv, workdir / "review.log")
    try:
        url = f"http://127.0.0.1:{port}"

        def serving():
            assert service.alive(), f"probewatch review exited:\n{service.output()}"
            return urllib.request.urlopen(f"{url}/healthz", timeout=2).status == 200

        wait_for(serving, 60, "the review app to serve")
        yield {"url": url, "port": port}
    finally:
        service.stop()


@pytest.fixture(scope="module")
def prometheus(prometheus_bin, workdir, sidecar, client, review_app, prometheus_port):
    port = prometheus_port
    config = {
        "global": {"scrape_interval": SCRAPE, "scrape_timeout": SCRAPE, "evaluation_interval": SCRAPE},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {"job_name": "probewatch", "static_configs": [{"targets": [f"127.0.0.1:{sidecar['metrics_port']}"]}]},
            {
                "job_name": "probewatch-inference",
                "static_configs": [{"targets": [f"127.0.0.1:{client['metrics_port']}"]}],
            },
            {"job_name": "probewatch-review", "static_configs": [{"targets": [f"127.0.0.1:{review_app['port']}"]}]},
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    check = subprocess.run(
        ["promtool", "check", "config", str(config_path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    service = Service(
        "prometheus",
        [
            prometheus_bin,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        workdir / "prometheus.log",
    )
    try:
        api = PromAPI(f"http://127.0.0.1:{port}", service)
        wait_for(
            lambda: service.alive() and urllib.request.urlopen(f"{api.base}/-/ready", timeout=2).status == 200,
            60,
            "Prometheus to be ready",
        )

        def all_targets_up():
            targets = api.get("/api/v1/targets")["activeTargets"]
            return len(targets) == 3 and all(t["health"] == "up" for t in targets)

        wait_for(all_targets_up, 30, "Prometheus to scrape the sidecar, the attach client and the review app")
        yield api
    finally:
        service.stop()


class PromAPI:
    def __init__(self, base: str, service: Service) -> None:
        self.base, self.service = base, service

    def get(self, path: str, **params) -> dict:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params, doseq=True)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400 for a parse error: the body says why
            body = json.loads(exc.read() or b"{}")
            raise AssertionError(f"{path} {params}: HTTP {exc.code}: {body.get('error')}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]


# ---------------------------------------------------------------------------------------------
# Traffic
# ---------------------------------------------------------------------------------------------


def raw_stream_traffic(address: str, fingerprint: str, d_model: int) -> list:
    """One chunk for a generation that was never opened (NOT_FOUND) and one generation closed
    with 3 client-dropped chunks, on a raw Monitor stream."""
    import queue

    import grpc
    import numpy as np

    from probewatch.proto.codec import encode_array
    from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
    from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc

    requests: queue.Queue = queue.Queue()
    done = object()

    def request_iter():
        while (item := requests.get()) is not done:
            yield item

    rows = np.random.default_rng(0).standard_normal((4, d_model)).astype(np.float32)
    chunk = pb.ActivationChunk(
        layer=1, kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS, positions=[0, 1, 2, 3], payload=encode_array(rows)
    )
    responses = []
    with grpc.insecure_channel(address) as channel:
        stream = pb_grpc.MonitorStub(channel).Monitor(request_iter(), timeout=30)
        unknown = pb.ActivationChunk()
        unknown.CopyFrom(chunk)
        unknown.generation_id = "never-opened"
        requests.put(pb.MonitorRequest(chunk=unknown))
        requests.put(
            pb.MonitorRequest(open=pb.Open(generation_id="raw-1", model_fingerprint=fingerprint, prompt_length=2))
        )
        good = pb.ActivationChunk()
        good.CopyFrom(chunk)
        good.generation_id = "raw-1"
        requests.put(pb.MonitorRequest(chunk=good))
        requests.put(
            pb.MonitorRequest(close=pb.Close(generation_id="raw-1", dropped_chunks=3, response_text="raw stream"))
        )
        for response in stream:
            responses.append(response)
            if response.WhichOneof("msg") == "summary" and response.summary.generation_id == "raw-1":
                break
        requests.put(done)
    return responses


def review_some(review_url: str) -> dict[str, str]:
    """A reviewer labels three pw-deception incidents (two true, one false positive) through the API."""
    headers = {"Authorization": f"Bearer {REVIEW_TOKEN}", "Content-Type": "application/json"}

    def call(path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{review_url}{path}", data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    rows = call("/api/incidents?probe=pw-deception&per_page=3")["rows"]
    verdicts = dict(zip((r["id"] for r in rows), ("true_positive", "true_positive", "false_positive")))
    for incident_id, verdict in verdicts.items():
        call(f"/api/incidents/{incident_id}/label", {"label": verdict})
    return verdicts


@pytest.fixture(scope="module")
def traffic(prometheus, sidecar, client, tiny_model, webhook_receiver, review_app):
    import torch

    monitor, model = client["monitor"], client["model"]
    _, _, fingerprint = tiny_model
    results = []
    torch.manual_seed(0)
    for i in range(GENERATIONS):
        prompt = torch.randint(3, model.config.vocab_size, (1, 6 + i % 5))
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
        results.extend(h.result(timeout=30) for h in monitor.last_generations)
        time.sleep(0.1)  # spread over a few scrapes
    raw = raw_stream_traffic(sidecar["address"], fingerprint, model.config.hidden_size)
    # Let the webhook worker deliver, then give Prometheus a few scrapes and rule evaluations.
    wait_for(lambda: len(webhook_receiver[1]) >= 2 * GENERATIONS, 60, "the alert webhook deliveries")
    prometheus_sees = f'sum(probewatch_alerts_total{{job="probewatch"}}) >= {3 * GENERATIONS}'
    wait_for(lambda: prometheus.query(prometheus_sees), 30, "Prometheus to scrape the alerts")
    wait_for(
        lambda: prometheus.query('sum(probewatch_rejected_messages_total{job="probewatch"}) > 0'),
        30,
        "Prometheus to scrape the rejected message",
    )
    verdicts = review_some(review_app["url"])
    wait_for(
        lambda: prometheus.query('sum(probewatch_review_labels{job="probewatch-review"}) >= 3'),
        30,
        "Prometheus to scrape the review verdicts",
    )
    # the rejected-message codes are pre-created at 0, so one rejection already shows in rate()
    time.sleep(3)
    return {"results": results, "raw": raw, "verdicts": verdicts}


def test_traffic_was_monitored(traffic, tiny_model, webhook_receiver):
    """The premise: every generation was scored by all three probes and alerted."""
    results = traffic["results"]
    assert len(results) == GENERATIONS
    for r in results:
        assert r.monitored and r.status == "closed", r
        assert {a["probe"] for a in r.to_json()["alerts"]} == set(BEHAVIOURS), r
    kinds = [m.WhichOneof("msg") for m in traffic["raw"]]
    errors = [m.error for m in traffic["raw"] if m.WhichOneof("msg") == "error"]
    assert errors and errors[0].code_name == "NOT_FOUND" and errors[0].generation_id == "never-opened"
    payloads = webhook_receiver[1]
    assert {p["type"] for p in payloads} == {"probewatch.alert"}
    assert {p["probe"] for p in payloads} == set(BEHAVIOURS)
    assert {p["model_fingerprint"] for p in payloads} == {tiny_model[2]}
    summaries = [m.summary for m in traffic["raw"] if m.WhichOneof("msg") == "summary"]
    assert len(summaries) == 1 and summaries[0].dropped_chunks == 3 and summaries[0].status == "closed"
    assert len(errors) == 1 and kinds[-1] == "summary"


def test_alerts_were_recorded_as_incidents(workdir, traffic):
    """The incident review workflow of docs/deploy.md reads what this sidecar recorded."""
    exe = str(Path(sys.executable).parent / "probewatch")
    db = str(workdir / "incidents.sqlite3")
    proc = subprocess.run(
        [exe, "incidents", "list", "--db", db, "--probe", "pw-deception", "--limit", "100", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == GENERATIONS + 1  # the raw generation alerted too
    assert {r["probe"] for r in rows} == {"pw-deception"}
    assert all(r["model_fingerprint"].startswith("pwfp1:") for r in rows)
    # open, except the three the reviewer labelled through the review app (labelling claims an incident)
    labelled = {r["id"]: (r["status"], r["label"]) for r in rows if r["label"]}
    assert labelled == {i: ("acknowledged", v) for i, v in traffic["verdicts"].items()}
    assert {r["status"] for r in rows if not r["label"]} == {"open"}


def test_sidecar_passes_the_image_healthcheck(sidecar):
    """The Dockerfile's HEALTHCHECK command against the running sidecar."""
    proc = subprocess.run(
        [sys.executable, str(HEALTHCHECK), "--address", sidecar["address"]], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0 and "SERVING" in proc.stdout


# ---------------------------------------------------------------------------------------------
# The dashboard
# ---------------------------------------------------------------------------------------------


def grafana_substitute(expr: str, probe: str | None = None) -> str:
    """Grafana's interpolation for this setup: job probewatch, every namespace/instance ("All" is
    `.*`), every probe or, in the per-probe repeated row, one probe."""
    values = {
        "job": "probewatch",
        "namespace": ".*",
        "instance": ".*",
        "probe": probe or ".*",
        "__rate_interval": RATE_INTERVAL,
        "__range": RANGE,
        "__interval": SCRAPE,
    }
    out = re.sub(r"\$\{?(__\w+|\w+)\}?", lambda m: values[m.group(1)], expr)
    assert "$" not in out, out
    return out


def dashboard_queries(dash: dict) -> list[tuple[str, str, str | None]]:
    """(panel title, expr, probe) for every target, repeated panels once per probe."""
    out = []
    repeat_probe = False
    for panel in dash["panels"]:
        if panel["type"] == "row":
            repeat_probe = panel.get("repeat") == "probe"
            continue
        for target in panel.get("targets", []):
            for probe in BEHAVIOURS if repeat_probe else [None]:
                out.append((panel["title"], target["expr"], probe))
    for annotation in dash["annotations"]["list"]:
        if annotation.get("expr"):
            out.append((f"annotation {annotation['name']}", annotation["expr"], None))
    return out


def values_of(result: list[dict]) -> list[float]:
    return [float(r["value"][1]) for r in result]


def test_every_dashboard_query_returns_data(prometheus, traffic):
    dash = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dash)
    assert len(queries) >= 30
    empty = []
    for title, expr, probe in queries:
        if expr.startswith("ALERTS"):
            continue  # checked with the rules below (a firing state needs the rules' `for`)
        result = prometheus.query(grafana_substitute(expr, probe))
        if not result:
            empty.append(f"{title}: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def test_dashboard_values_describe_the_traffic(prometheus, traffic, tiny_model):
    dash = json.loads(DASHBOARD.read_text())
    by_title = {p["title"]: p for p in dash["panels"]}

    def stat(title: str) -> float:
        (value,) = values_of(prometheus.query(grafana_substitute(by_title[title]["targets"][0]["expr"])))
        return value

    assert stat("Monitoring") == 2.0  # LIVE: scraped and scoring
    assert stat("Attach clients") == 1.0  # CONNECTED
    assert stat("Tokens scored / s") > 0
    # 3 probes x (30 attach-client generations + the raw one); increase() extrapolates a little.
    assert 3 * GENERATIONS <= stat("Alerts in range") <= 3 * (GENERATIONS + 1) * 1.1
    assert stat("Dropped chunks in range") > 0  # the raw generation's 3 client-dropped chunks
    # the review app's view of the same store: 3 probes x 30 generations + the raw one's pw-deception
    # incident (its chunk was on layer 1 only), 3 of them labelled (acknowledged)
    incidents = 3 * GENERATIONS + 1
    assert stat("Review backlog") == incidents
    assert 0 < stat("Oldest open incident") < 600 and stat("Review store") == 1.0
    precision = prometheus.query(grafana_substitute(by_title["Reviewed precision per probe"]["targets"][0]["expr"]))
    assert {r["metric"]["probe"]: float(r["value"][1]) for r in precision} == {"pw-deception": pytest.approx(2 / 3)}
    backlog = prometheus.query(grafana_substitute(by_title["Backlog by status"]["targets"][0]["expr"]))
    assert {r["metric"]["status"]: float(r["value"][1]) for r in backlog} == {
        "open": incidents - 3,
        "acknowledged": 3,
        "resolved": 0,
    }

    table = by_title["Recent flagged generations (per probe)"]
    last = prometheus.query(grafana_substitute(table["targets"][0]["expr"]))
    assert {r["metric"]["probe"] for r in last} == set(BEHAVIOURS)
    now_ms = time.time() * 1000
    assert all(now_ms - 300_000 < v <= now_ms + 5_000 for v in values_of(last))

    bundles = prometheus.query(grafana_substitute(by_title["Loaded probe bundles"]["targets"][0]["expr"]))
    _, _, fingerprint = tiny_model
    assert {(r["metric"]["probe"], r["metric"]["behaviour"], r["metric"]["fingerprint"]) for r in bundles} == {
        (p, b, fingerprint) for p, b in BEHAVIOURS.items()
    }
    assert {r["metric"]["version"] for r in bundles} == {"e2e-1", "e2e-2", "e2e-3"}

    heat = next(p for p in dash["panels"] if p["type"] == "heatmap" and "Token" in p["title"])
    for probe in BEHAVIOURS:
        buckets = prometheus.query(grafana_substitute(heat["targets"][0]["expr"], probe))
        assert len(buckets) == 26  # logit buckets -12..12 and +Inf
        assert max(values_of(buckets)) > 0


def test_probe_card_shows_live_drift_from_prometheus(prometheus, traffic, review_app):
    """The review app asks this Prometheus for the sidecar's drift gauges: the probe card shows the PSI
    and the alert rate against the calibrated one (every generation alerts, as calibrated at -1000: 1.0x)."""
    headers = {"Authorization": f"Bearer {REVIEW_TOKEN}"}
    wait_for(
        lambda: prometheus.query('probewatch_probe_score_psi{job="probewatch", probe="pw-deception"}'),
        30,
        "Prometheus to scrape the drift gauges",
    )

    def card() -> str | None:
        page = urllib.request.urlopen(urllib.request.Request(f"{review_app['url']}/incidents/1", headers=headers))
        line = re.search(r'<dd id="probe-drift">([^<]*)</dd>', page.read().decode()).group(1)
        return line if "score PSI" in line else None

    line = wait_for(card, 45, "the probe card to show drift (the review app caches Prometheus for 30 s)")
    assert re.search(r"score PSI \d+\.\d\d \((shifted from|close to) calibration\)", line), line
    assert "alert rate 100.0% vs 100.0% calibrated (1.0×)" in line, line


def test_dashboard_variables_find_values(prometheus, traffic):
    dash = json.loads(DASHBOARD.read_text())
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
        assert m, var["definition"]
        selector, label = grafana_substitute(m.group(1)), m.group(2)
        series = prometheus.get("/api/v1/series", **{"match[]": selector})
        assert series, f"variable {var['name']}: no series for {selector}"
        found = {s.get(label) for s in series} - {None}
        if label == "namespace":
            continue  # a plain Prometheus adds no namespace label: Grafana offers "All" (= .*)
        assert found, f"variable {var['name']}: no {label} values"
        if label == "probe":
            assert found == set(BEHAVIOURS)


# ---------------------------------------------------------------------------------------------
# The alert rules
# ---------------------------------------------------------------------------------------------

SELECTOR_RE = re.compile(r"\b(probewatch_[a-z0-9_]+|up)\b\s*(\{[^}]*\})?")


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]


def test_prometheus_loaded_every_rule(prometheus, traffic):
    expected = {r["alert"] for r in rules()}

    def evaluated():
        groups = prometheus.get("/api/v1/rules")["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        return loaded if set(loaded) == expected and all(r.get("health") == "ok" for r in loaded.values()) else None

    loaded = wait_for(evaluated, 20, "every rule to be loaded and evaluated")
    for name, rule in loaded.items():
        assert not rule.get("lastError"), f"{name}: {rule['lastError']}"


def test_every_rule_selector_returns_series(prometheus, traffic):
    missing = []
    for rule in rules():
        selectors = {m.group(0).strip() for m in SELECTOR_RE.finditer(rule["expr"])}
        assert selectors, rule["alert"]
        for selector in selectors:
            if not prometheus.query(selector):
                missing.append(f"{rule['alert']}: {selector}")
    assert not missing, "rule selectors without series:\n" + "\n".join(missing)


def test_alert_expressions_match_the_traffic(prometheus, traffic):
    by_name = {r["alert"]: r for r in rules()}
    assert set(by_name) >= MUST_FIRE | MUST_BE_QUIET
    fired, wrongly_quiet, wrongly_firing = {}, [], []
    for name, rule in by_name.items():
        result = prometheus.query(rule["expr"])  # parses, or the API answers 400 and this fails
        if name in MUST_FIRE and not result:
            wrongly_quiet.append(name)
        if name in MUST_BE_QUIET and result:
            wrongly_firing.append(f"{name}: {result}")
        fired[name] = result
    assert not wrongly_quiet, f"expected data from {wrongly_quiet}"
    assert not wrongly_firing, "expected no data:\n" + "\n".join(wrongly_firing)
    # Every generation (the raw one too) alerted on every probe: each flagged fraction is 100%.
    for name in (
        "ProbewatchDeceptionAlertRateHigh",
        "ProbewatchRefusalAlertRateHigh",
        "ProbewatchAlignmentFakingAlertRateHigh",
    ):
        (series,) = fired[name]
        assert series["metric"]["job"] == "probewatch"
        assert float(series["value"][1]) == pytest.approx(1.0, abs=0.1)
    assert {r["metric"]["code"] for r in fired["ProbewatchRejectingMessages"]} == {"NOT_FOUND"}
    assert {r["metric"]["reason"] for r in fired["ProbewatchDroppingChunks"]} == {"client_dropped"}


def test_rule_engine_raises_the_alerts(prometheus, traffic):
    """Prometheus's own rule evaluation agrees: the triggered alerts are pending (their `for`
    keeps them from firing within a test), and the dashboard's annotation query parses."""

    def pending():
        result = prometheus.query('ALERTS{alertname=~"Probewatch.*"}')
        names = {r["metric"]["alertname"] for r in result}
        return names if names >= MUST_FIRE else None

    names = wait_for(pending, 20, f"ALERTS to show {sorted(MUST_FIRE)}")
    assert not names & MUST_BE_QUIET
    dash = json.loads(DASHBOARD.read_text())
    annotation = next(a for a in dash["annotations"]["list"] if a.get("expr"))
    prometheus.query(annotation["expr"])  # parses (firing needs the rules' `for` to elapse)
