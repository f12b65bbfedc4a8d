"""The embedded OpenAI-compatible server (what `probewatch run` serves), on a tiny model folder with
a tiny word-level tokenizer: real HTTP, real in-process sidecar, attach client on."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.server.inference.helpers import MESSAGES, local_stack

pytestmark = pytest.mark.compat


@pytest.fixture
def stack(chat_folder, tmp_path):
    with local_stack(chat_folder, tmp_path, max_tokens=5) as s:
        yield s


def test_models_health_and_metrics(stack):
    with httpx.Client(base_url=stack.url, timeout=60) as c:
        models = c.get("/v1/models").json()
        assert models["object"] == "list" and models["data"][0]["id"] == stack.loaded.model_id
        assert c.get("/healthz").json()["monitoring"] is True
        assert "probewatch_client_monitoring_up 1.0" in c.get("/metrics").text


def test_chat_completion_carries_probe_scores(stack, tmp_path):
    from probewatch.server.store import IncidentStore

    with httpx.Client(base_url=stack.url, timeout=120) as c:
        r = c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 4, "metadata": {"tenant": "t1"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    pw = body["probewatch"]
    assert pw["monitored"] and pw["status"] == "closed" and pw["generation_id"].startswith("gen-")
    assert set(pw["scores"]) == {"dec", "avg"} and pw["flagged"]["dec"] and not pw["flagged"]["avg"]
    n_scored = usage["completion_tokens"] - (1 if body["choices"][0]["finish_reason"] == "stop" else 0)
    assert pw["tokens_scored"] == n_scored
    assert [a["probe"] for a in pw["alerts"]] == ["dec"] and pw["alerts"][0]["incident_id"]
    incident = IncidentStore.open(tmp_path / "incidents.sqlite3", readonly=True).get(pw["alerts"][0]["incident_id"])
    assert incident.generation_id == pw["generation_id"] and incident.metadata == {"tenant": "t1"}
    assert "capital of france" in incident.prompt


def test_streaming_sends_scores_in_the_final_chunk(stack):
    events = []
    with (
        httpx.Client(base_url=stack.url, timeout=120) as c,
        c.stream("POST", "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 4, "stream": True}) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length") and "usage" in final
    assert final["probewatch"]["monitored"] and set(final["probewatch"]["scores"]) == {"dec", "avg"}
    assert all("probewatch" not in ch for ch in chunks[:-1])


def test_request_errors(stack):
    with httpx.Client(base_url=stack.url, timeout=60) as c:
        r = c.post("/v1/chat/completions", json={"model": "gpt-5", "messages": MESSAGES})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"  # OpenAI's error shape
        # validation: 400 in OpenAI's shape, as OpenAI and vLLM answer it (test_admission_and_errors.py)
        assert c.post("/v1/chat/completions", json={"messages": []}).status_code == 400
        assert c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 0}).status_code == 400


def test_kill_switch_through_http(chat_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("PROBEWATCH_DISABLE", "1")
    with local_stack(chat_folder, tmp_path, max_tokens=3) as s:
        body = httpx.post(f"{s.url}/v1/chat/completions", json={"messages": MESSAGES}, timeout=60).json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["probewatch"]["monitored"] is False and body["probewatch"]["status"] == "disabled"


def test_run_command_serves_until_sigterm(chat_folder, tmp_path):
    folder, bundles = chat_folder
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "probewatch.cli.main",
            "run",
            "--model",
            str(folder),
            "--bundles",
            *map(str, bundles),
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--incident-db",
            str(tmp_path / "i.sqlite3"),
            "--max-tokens",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()["monitoring"]:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        body = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": MESSAGES}, timeout=60
        ).json()
        assert body["probewatch"]["monitored"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in out and "in-process sidecar" in out


def test_a_stalled_stream_ends_with_an_error_naming_the_wait(stack):
    """Nothing hangs: a generation that produces no token within the token timeout ends the SSE
    stream with an error event saying so (the stack keeps serving)."""
    model = stack.service.model
    stall = model.register_forward_pre_hook(lambda *a: time.sleep(0.6))
    stack.service.token_timeout_s = 0.2
    try:
        with (
            httpx.Client(base_url=stack.url, timeout=60) as c,
            c.stream("POST", "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2, "stream": True}) as r,
        ):
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    finally:
        stall.remove()
        stack.service.token_timeout_s = 120.0
    errors = [json.loads(e)["error"] for e in events[:-1] if "error" in json.loads(e)]
    assert events[-1] == "[DONE]" and len(errors) == 1
    assert "no token within 0.2s" in errors[0]["message"]
    with httpx.Client(base_url=stack.url, timeout=60) as c:
        assert c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2}).status_code == 200


API_KEY = "pw-test-key-0123456789"


@pytest.fixture
def guarded(chat_folder, tmp_path):
    from probewatch.server.inference.limits import HTTPLimits

    limits = HTTPLimits(
        api_keys=(API_KEY,), max_request_bytes=4096, max_context_tokens=40, max_completion_tokens=8, max_waiting=1
    )
    with local_stack(chat_folder, tmp_path, max_tokens=3, http_limits=limits) as s:
        yield s


def test_api_key_and_request_limits(guarded):
    auth = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=guarded.url, timeout=120) as c:
        for headers, why in (({}, "Missing API key"), ({"authorization": "Bearer nope"}, "Incorrect API key")):
            r = c.post("/v1/chat/completions", json={"messages": MESSAGES}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "invalid_api_key" and why in r.json()["error"]["message"]
        assert c.get("/v1/models").status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200  # probes and scrapes
        assert c.post("/v1/chat/completions", json={"messages": MESSAGES}, headers=auth).status_code == 200

        def error(response) -> tuple[int, str]:
            return response.status_code, response.json()["error"]["code"]

        big = {"messages": [{"role": "user", "content": "hi " * 3000}]}
        assert error(c.post("/v1/chat/completions", json=big, headers=auth)) == (413, "request_too_large")
        chunked = c.post(
            "/v1/chat/completions",
            content=iter([json.dumps(big).encode()]),
            headers={**auth, "content-type": "application/json"},
        )
        assert error(chunked) == (413, "request_too_large")
        too_many = {"messages": MESSAGES, "max_tokens": 9}
        assert error(c.post("/v1/chat/completions", json=too_many, headers=auth)) == (400, "max_tokens_too_large")
        long = {"messages": [{"role": "user", "content": "hello " * 60}], "max_tokens": 2}
        r = c.post("/v1/chat/completions", json=long, headers=auth)
        assert error(r) == (400, "context_length_exceeded") and "maximum context length is 40" in r.text
        r = c.post("/v1/chat/completions", json={**long, "stream": True}, headers=auth)
        assert error(r) == (400, "context_length_exceeded")  # refused before the stream commits to 200


def test_busy_server_answers_429(guarded):
    auth = {"authorization": f"Bearer {API_KEY}"}
    service = guarded.service
    results: list = []
    service._lock.acquire()  # a generation is running
    try:
        with httpx.Client(base_url=guarded.url, timeout=120) as c:
            waiting = __import__("threading").Thread(
                target=lambda: results.append(
                    httpx.post(
                        f"{guarded.url}/v1/chat/completions", json={"messages": MESSAGES}, headers=auth, timeout=120
                    )
                )
            )
            waiting.start()
            deadline = time.monotonic() + 30
            while service._waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            r = c.post("/v1/chat/completions", json={"messages": MESSAGES}, headers=auth)
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "server_busy"
            r = c.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": True}, headers=auth)
            assert r.status_code == 429
    finally:
        service._lock.release()
    waiting.join(120)
    assert results[0].status_code == 200


def test_internal_errors_are_not_echoed(stack):
    def explode(*args):
        raise RuntimeError("secret internals at /srv/keys/prod.pem")

    hook = stack.service.model.register_forward_pre_hook(explode)
    try:
        with httpx.Client(base_url=stack.url, timeout=60) as c:
            r = c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2})
            assert r.status_code == 500 and "secret" not in r.text
            assert r.json()["error"]["type"] == "server_error" and "see the server log" in r.json()["error"]["message"]
            with c.stream("POST", "/v1/chat/completions", json={"messages": MESSAGES, "stream": True}) as s:
                events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and "secret" not in "".join(events)
        assert "see the server log" in json.loads(events[-2])["error"]["message"]
    finally:
        hook.remove()


def test_oversized_metadata_through_the_http_endpoint_is_still_monitored(chat_folder, tmp_path):
    from probewatch.server.client.bounds import MARKER
    from probewatch.server.store import IncidentStore
    from tests.server.grpc_helpers import metric_value

    attack = {f"field{i}": "z" * 400 for i in range(120)}  # 120 entries, ~48 KiB: the sidecar would refuse
    with (
        local_stack(chat_folder, tmp_path, max_tokens=5) as stack,
        httpx.Client(base_url=stack.url, timeout=120) as c,
    ):
        r = c.post(
            "/v1/chat/completions",
            json={"messages": MESSAGES, "max_tokens": 4, "metadata": attack, "user": "u" * 20000},
        )
        assert r.status_code == 200, r.text
        pw = r.json()["probewatch"]
        assert pw["monitored"] and pw["status"] == "closed", pw
        metrics = c.get("/metrics").text
    assert metric_value(metrics, "probewatch_client_bounded_inputs_total", what="metadata") == 1
    assert metric_value(metrics, "probewatch_client_unmonitored_generations_total", reason="sidecar_down") == 0
    incident = IncidentStore.open(tmp_path / "incidents.sqlite3", readonly=True).get(pw["alerts"][0]["incident_id"])
    assert len(incident.metadata) <= 64 and MARKER in incident.metadata
    assert incident.metadata["field0"] == "z" * 400  # the first entries are kept whole
