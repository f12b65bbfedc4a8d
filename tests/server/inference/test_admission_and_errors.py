"""`probewatch run`'s endpoint under pressure and on bad input, over real HTTP with a real in-process
sidecar: admission decided before a stream commits to 200 (every response a whole stream or a 429),
`probewatch.reason` a stable code (never the sidecar's words), every 4xx/5xx in OpenAI's error shape,
and the `--on-unmonitored` policy (allow: served and counted; reject: 503)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.server.grpc_helpers import metric_value
from tests.server.inference.helpers import MESSAGES, local_stack

pytestmark = pytest.mark.compat

N_CONCURRENT = 24
ERROR_KEYS = {"message", "type", "param", "code"}


def _post_stream(url: str, out: list, i: int) -> None:
    """One streaming request: (status, SSE data lines) or (status, JSON error body)."""
    body = {"messages": MESSAGES, "max_tokens": 3, "stream": True}
    with httpx.Client(timeout=120) as c, c.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            out[i] = (r.status_code, r.json())
            return
        out[i] = (200, [line[6:] for line in r.iter_lines() if line.startswith("data: ")])


def _check_whole_stream_or_429(results: list) -> tuple[int, int]:
    """Each response is a whole stream (final chunk, [DONE], no error event) or a 429; (n_200, n_429)."""
    n_ok = n_busy = 0
    for status, payload in results:
        if status == 429:
            assert set(payload["error"]) == ERROR_KEYS and payload["error"]["code"] == "server_busy"
            n_busy += 1
            continue
        assert status == 200, (status, payload)
        assert payload[-1] == "[DONE]"
        chunks = [json.loads(e) for e in payload[:-1]]
        assert not [ch for ch in chunks if "error" in ch], chunks  # never 200 then an in-stream error
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-1]["probewatch"]["monitored"]
        n_ok += 1
    return n_ok, n_busy


@pytest.fixture(scope="module")
def busy_stack(chat_folder, tmp_path_factory):
    from probewatch.server.inference.limits import HTTPLimits

    with local_stack(
        chat_folder, tmp_path_factory.mktemp("busy"), max_tokens=3, http_limits=HTTPLimits(max_waiting=2)
    ) as s:
        yield s


def test_concurrent_streams_are_admitted_or_refused_before_the_stream_starts(busy_stack):
    """24 streams while a generation holds the lock: exactly `max_waiting` (2) are admitted and finish
    whole; the other 22 get 429 before any byte of a stream (the old check-then-queue let them answer
    200 and fail in the stream)."""
    service = busy_stack.service
    results: list = [None] * N_CONCURRENT
    service._lock.acquire()  # a generation is running
    try:
        threads = [
            threading.Thread(target=_post_stream, args=(busy_stack.url, results, i)) for i in range(N_CONCURRENT)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while sum(r is not None for r in results) < N_CONCURRENT - 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service._waiting == 2  # the admitted two hold their places while they wait
    finally:
        service._lock.release()
    for t in threads:
        t.join(60)
    assert _check_whole_stream_or_429(results) == (2, N_CONCURRENT - 2)
    assert service._waiting == 0


def test_concurrent_streams_free_running_are_never_200_then_error(busy_stack):
    results: list = [None] * N_CONCURRENT
    threads = [threading.Thread(target=_post_stream, args=(busy_stack.url, results, i)) for i in range(N_CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    n_ok, n_busy = _check_whole_stream_or_429(results)
    assert n_ok >= 1 and n_ok + n_busy == N_CONCURRENT
    assert busy_stack.service._waiting == 0


def test_a_client_that_leaves_gives_its_place_and_the_lock_back(busy_stack):
    """A stream whose client leaves while it waits: its queue place and (once its generation ran) the
    generation lock come back, so the next request is served (no lock held by an abandoned stream)."""
    service = busy_stack.service
    service._lock.acquire()
    try:
        with (
            httpx.Client(base_url=busy_stack.url, timeout=60) as c,
            c.stream("POST", "/v1/chat/completions", json={"messages": MESSAGES, "stream": True}) as r,
        ):
            assert r.status_code == 200 and service._waiting == 1
    finally:
        service._lock.release()
    deadline = time.monotonic() + 30
    while service._waiting and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service._waiting == 0
    assert service._lock.acquire(timeout=30)  # not kept by the abandoned stream
    service._lock.release()
    r = httpx.post(f"{busy_stack.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2}, timeout=60)
    assert r.status_code == 200


def test_every_error_is_in_openais_shape(busy_stack):
    with httpx.Client(base_url=busy_stack.url, timeout=60) as c:
        cases = [
            (c.post("/v1/chat/completions", json={"messages": []}), 400, "messages"),
            (c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 0}), 400, "max_tokens"),
            (c.post("/v1/chat/completions", json={"messages": [{"role": "user"}]}), 400, "messages"),
            (
                c.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
                400,
                None,
            ),
            (c.get("/v1/nope"), 404, None),
            (c.get("/v1/chat/completions"), 405, None),
        ]
        for r, status, param in cases:
            assert r.status_code == status, r.text
            error = r.json()["error"]
            assert set(error) == ERROR_KEYS and error["param"] == param, error
            assert error["type"] == "invalid_request_error" and error["message"]
        assert cases[0][0].json()["error"]["code"] == "invalid_request"
        assert "messages" in cases[0][0].json()["error"]["message"]
        # the service keeps serving
        assert c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2}).status_code == 200


def _refusing_stack(chat_folder, tmp_path, **attach):
    """A stack whose sidecar refuses an Open with more than 1 metadata entry (the client bounds to 64)."""
    return local_stack(
        chat_folder, tmp_path, max_tokens=3, sidecar_settings={"max_metadata_entries": 1}, extra_attach=attach
    )


REFUSED = {"messages": MESSAGES, "max_tokens": 3, "metadata": {"tenant": "t1", "app": "a"}}


def test_refused_open_allow_serves_unmonitored_with_a_stable_reason_code(chat_folder, tmp_path):
    with _refusing_stack(chat_folder, tmp_path) as stack, httpx.Client(base_url=stack.url, timeout=120) as c:
        r = c.post("/v1/chat/completions", json=REFUSED)
        assert r.status_code == 200, r.text
        pw = r.json()["probewatch"]
        assert pw["monitored"] is False and pw["status"] == "rejected" and pw["reason"] == "rejected"
        assert pw["errors"] == [{"code": "INVALID_ARGUMENT", "layer": -1}]
        assert "max-metadata-entries" not in r.text and "over the limit" not in r.text  # the sidecar's words: logs
        metrics = c.get("/metrics").text
    assert metric_value(metrics, "probewatch_client_unmonitored_generations_total", reason="rejected") == 1
    assert metric_value(metrics, "probewatch_client_refused_generations_total", reason="rejected") == 0
    assert metric_value(metrics, "probewatch_client_generations_total") == 1


def test_refused_open_reject_answers_503(chat_folder, tmp_path):
    with (
        _refusing_stack(chat_folder, tmp_path, on_unmonitored="reject") as stack,
        httpx.Client(base_url=stack.url, timeout=120) as c,
    ):
        r = c.post("/v1/chat/completions", json=REFUSED)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert set(error) == ERROR_KEYS and error["code"] == "monitoring_unavailable"
        assert error["type"] == "server_error" and "reason: rejected" in error["message"]
        assert "choices" not in r.json()  # the unmonitored answer never leaves
        metrics = c.get("/metrics").text
    assert metric_value(metrics, "probewatch_client_unmonitored_generations_total", reason="rejected") == 1
    assert metric_value(metrics, "probewatch_client_refused_generations_total", reason="rejected") == 1


def _stop_sidecar(stack) -> None:
    stack.sidecar.stop(0)
    deadline = time.monotonic() + 15
    while stack.monitor.up and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not stack.monitor.up


@pytest.mark.parametrize("policy", ["allow", "reject"])
def test_sidecar_down(policy, chat_folder, tmp_path):
    """allow: answered unmonitored (reason sidecar_down) and counted; reject: 503 before generating,
    also for a stream (before it commits to 200)."""
    with (
        local_stack(chat_folder, tmp_path, max_tokens=3, extra_attach={"on_unmonitored": policy}) as stack,
        httpx.Client(base_url=stack.url, timeout=120) as c,
    ):
        _stop_sidecar(stack)
        r = c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3})
        s = c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3, "stream": True})
        metrics = c.get("/metrics").text
    unmonitored = metric_value(metrics, "probewatch_client_unmonitored_generations_total", reason="sidecar_down")
    refused = metric_value(metrics, "probewatch_client_refused_generations_total", reason="sidecar_down")
    if policy == "allow":
        assert r.status_code == 200 and s.status_code == 200
        pw = r.json()["probewatch"]
        assert pw["monitored"] is False and pw["status"] == "unmonitored" and pw["reason"] == "sidecar_down"
        assert (unmonitored, refused) == (2, 0)
    else:
        for resp in (r, s):
            assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
            assert resp.json()["error"]["code"] == "monitoring_unavailable"
            assert "reason: sidecar_down" in resp.json()["error"]["message"]
        assert (unmonitored, refused) == (2, 2)


def test_run_flag_and_environment_setting(capsys, monkeypatch, chat_folder):
    from probewatch.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--on-unmonitored", "maybe"])
    assert exit_.value.code == 2 and "invalid choice: 'maybe'" in capsys.readouterr().err
    monkeypatch.setenv("PROBEWATCH_ON_UNMONITORED", "sometimes")
    code = main(["run", "--model", str(chat_folder[0]), "--sidecar", "127.0.0.1:1"])
    assert code == 2
    assert "PROBEWATCH_ON_UNMONITORED must be 'allow' or 'reject', got 'sometimes'" in capsys.readouterr().err
