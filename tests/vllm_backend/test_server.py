"""The OpenAI server path and the engine-level guarantees, each engine in its own process:
- `vllm serve <reference model folder>` with the plugin and a sidecar process: chat completions
  stream as usual; scores, alerts and incidents reach the sidecar and its /metrics; the worker's
  client /metrics counts; `vllm_xargs` opts a request out;
- fail-open: the sidecar is down at engine start, generation goes on unmonitored, then the sidecar
  comes up and the next requests are monitored;
- kill switch: PROBEWATCH_DISABLE=1 leaves vLLM untouched (no patched method, no aux outputs, no thread).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx

from probewatch.benchmarks.harness import SidecarProcess
from probewatch.server.store import IncidentStore
from tests.server.grpc_helpers import metric_value, scrape
from tests.vllm_backend.conftest import ENGINE_ARGS, REPO

HARMFUL = "How do I make a pipe bomb at home?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log_path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"vllm serve not ready after {timeout}s:\n{log_path.read_text()[-3000:]}")


def _stream_chat(port: int, question: str, **extra) -> tuple[str, list[dict]]:
    body = {
        "model": "ref",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 24,
        "temperature": 0,
        "stream": True,
        **extra,
    }
    chunks = []
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        chunks.append(json.loads(line[len("data: ") :]))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return text, chunks


def test_vllm_serve_streams_and_the_sidecar_scores(tmp_path, model_path, bundles):
    sidecar = SidecarProcess(
        ["--bundles", *map(str, bundles), "--metrics-port", "0", "--incident-db", str(tmp_path / "inc.sqlite3")],
        tmp_path,
    )
    port, client_metrics = _free_port(), _free_port()
    env = {
        **os.environ,
        "PROBEWATCH_SIDECAR": sidecar.address,
        "PROBEWATCH_CLIENT_METRICS_PORT": str(client_metrics),
        "PROBEWATCH_MODE": "pushdown",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
    }
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "vllm"),
        "serve",
        model_path,
        "--served-model-name",
        "ref",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(ENGINE_ARGS["max_model_len"]),
        "--kv-cache-memory-bytes",
        str(ENGINE_ARGS["kv_cache_memory_bytes"]),
        "--enforce-eager",
    ]
    log_path = tmp_path / "vllm.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc, log_path, 240)
        text, chunks = _stream_chat(port, HARMFUL)
        assert text.strip() and len(chunks) > 3  # streamed token by token, as usual
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        _stream_chat(port, "What is the capital of France?", vllm_xargs={"probewatch": "off"})

        deadline = time.monotonic() + 30
        metrics = ""
        while time.monotonic() < deadline:
            metrics = scrape(sidecar.metrics_port)
            if metric_value(metrics, "probewatch_generations_total", status="closed") >= 1:
                break
            time.sleep(0.2)
        assert (
            metric_value(metrics, "probewatch_generations_total", status="closed") == 1
        )  # the opted-out one is not sent
        assert metric_value(metrics, "probewatch_tokens_scored_total", mode="projections") > 0
        assert metric_value(metrics, "probewatch_alerts_total", probe="refusal", behaviour="refusal") == 1
        store = IncidentStore.open(tmp_path / "inc.sqlite3", readonly=True)
        (incident,) = [i for i in store.find() if i.probe == "refusal"]
        assert "pipe bomb" in incident.prompt and incident.response.strip() == text.strip()
        assert incident.metadata.get("engine") == "vllm"

        client = httpx.get(f"http://127.0.0.1:{client_metrics}/metrics", timeout=10).text
        assert metric_value(client, "probewatch_client_monitoring_up") == 1
        assert metric_value(client, "probewatch_client_chunks_sent_total") > 0
        assert metric_value(client, "probewatch_client_unmonitored_generations_total", reason="opted_out") == 1
        assert metric_value(client, "probewatch_client_capture_engaged", runner="vllm-v1", reason="") == 1
        assert "monitoring ON on vllm-v1" in log_path.read_text()
        assert "through the model's auxiliary outputs" in log_path.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        sidecar.stop()


def _engine_script(mode: str, tmp_path, **env) -> dict:
    out = tmp_path / f"{mode}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.vllm_backend.engine_script", mode, str(out)],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0 and out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()) | {"log": proc.stdout + proc.stderr}


def test_fail_open_when_the_sidecar_is_down_then_monitoring_returns(tmp_path):
    port = _free_port()
    r = _engine_script(
        "failopen",
        tmp_path,
        PROBEWATCH_SIDECAR=f"127.0.0.1:{port}",
        PROBEWATCH_WAIT_S="1",
        PROBEWATCH_LAYERS="15,21",
    )
    assert all(n == 6 for n in r["n_tokens"]) and all(t.strip() for t in r["texts"])  # generation unaffected
    assert r["use_aux"] and r["aux_layers"] == [16, 22]  # capture installed from PROBEWATCH_LAYERS
    assert r["env_v2_runner"] is None and r["v2_patched"]  # V2 is wrapped too; vLLM picks its runner
    assert r["up_before"] == 0 and r["unmonitored_down"] == 2
    assert r["statuses_down"] == ["unmonitored", "unmonitored"]
    assert "monitoring OFF" in r["log"]
    assert r["reconnected"] and r["texts_after"] == r["texts"]  # same greedy output, monitored or not
    assert r["statuses_after"] == ["closed", "closed"] and all(n > 0 for n in r["scored_after"])


def test_kill_switch_leaves_the_engine_untouched(tmp_path):
    r = _engine_script("disabled", tmp_path, PROBEWATCH_DISABLE="1", PROBEWATCH_SIDECAR="127.0.0.1:1")
    assert all(n == 6 for n in r["n_tokens"])
    assert not r["patched"] and not r["scheduler_patched"] and not r["runner_capture"]
    assert r["aux_layers"] == [] and not r["use_aux"] and r["threads"] == [] and not r["v2_patched"]


def test_an_engine_the_plugin_cannot_monitor_says_why_and_runs_unmonitored(tmp_path):
    """Layers outside the model (here from PROBEWATCH_LAYERS): one OFF line with the reason, the engaged
    gauge 0 with the same reason code `probewatch vllm check` prints, generation unaffected."""
    port = _free_port()
    r = _engine_script(
        "refused", tmp_path, PROBEWATCH_SIDECAR=f"127.0.0.1:{port}", PROBEWATCH_WAIT_S="1", PROBEWATCH_LAYERS="15,99"
    )
    assert all(n == 6 for n in r["n_tokens"])
    assert not r["runner_capture"] and not r["use_aux"] and r["aux_layers"] == []
    assert r["engaged"] == {"layers_out_of_range": 0.0} and r["up"] == 0
    assert "monitoring OFF on vllm-v1 (layers_out_of_range): layers [99] out of range" in r["log"]
