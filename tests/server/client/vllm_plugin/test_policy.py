"""The vLLM plugin's pure parts, without vLLM: the per-request policy read from
SamplingParams.extra_args / vllm_xargs, and its environment settings. Bad values are refused with a
message naming the key (the request then runs unmonitored; the engine never sees an exception)."""

from __future__ import annotations

import pytest

from probewatch import envs
from probewatch.server.client.vllm_plugin.policy import PolicyError, request_policy


def test_default_policy_and_opt_in_out():
    assert request_policy(None, True).monitored
    assert not request_policy({}, False).monitored
    for off in (False, 0, "off", "false", "0", "no"):
        assert not request_policy({"probewatch": off}, True).monitored
    for on in (True, 1, "on", "true", "1", "yes"):
        assert request_policy({"probewatch": on}, False).monitored


def test_probe_selection_and_metadata_from_python_and_http():
    p = request_policy({"probewatch_probes": ["refusal"], "probewatch_metadata": {"tenant": 7}}, True)
    assert p.probes == ["refusal"] and p.metadata == {"tenant": "7"}
    http = request_policy({"probewatch_probes": "refusal, deception", "probewatch_metadata": '{"a": "b"}'}, True)
    assert http.probes == ["refusal", "deception"] and http.metadata == {"a": "b"}


@pytest.mark.parametrize(
    "extra,why",
    [
        ({"probewatch": "maybe"}, "extra_args['probewatch'] must be true/false"),
        ({"probewatch": [1]}, "extra_args['probewatch'] must be true/false"),
        ({"probewatch_probes": [1, 2]}, "extra_args['probewatch_probes'] must be a list of probe ids"),
        ({"probewatch_metadata": "{not json"}, "is not a JSON object"),
        ({"probewatch_metadata": "[1]"}, "must be an object, got list"),
    ],
)
def test_bad_extra_args_are_refused_by_name(extra, why):
    with pytest.raises(PolicyError, match=why.replace("[", r"\[").replace("]", r"\]")):
        request_policy(extra, True)


def test_plugin_settings(monkeypatch):
    monkeypatch.setenv("PROBEWATCH_MODE", "pushdown")
    monkeypatch.setenv("PROBEWATCH_LAYERS", "21, 15,15")
    monkeypatch.setenv("PROBEWATCH_WAIT_S", "2.5")
    monkeypatch.setenv("PROBEWATCH_MONITOR", "none")
    assert envs.vllm_mode() == "pushdown" and envs.vllm_layers() == [15, 21]
    assert envs.vllm_wait_s() == 2.5 and not envs.vllm_monitor_default()
    monkeypatch.setenv("PROBEWATCH_MODE", "fast")
    with pytest.raises(ValueError, match="PROBEWATCH_MODE must be 'rows' or 'pushdown', got 'fast'"):
        envs.vllm_mode()
    monkeypatch.setenv("PROBEWATCH_LAYERS", "15,x")
    with pytest.raises(ValueError, match="PROBEWATCH_LAYERS must be a comma list"):
        envs.vllm_layers()
    monkeypatch.setenv("PROBEWATCH_MONITOR", "some")
    with pytest.raises(ValueError, match="PROBEWATCH_MONITOR must be 'all' or 'none'"):
        envs.vllm_monitor_default()
    monkeypatch.delenv("PROBEWATCH_SEND_LINGER_MS", raising=False)
    assert envs.vllm_send_linger_s() == 1.0
    monkeypatch.setenv("PROBEWATCH_SEND_LINGER_MS", "40")
    assert envs.vllm_send_linger_s() == pytest.approx(0.04)
    for bad in ("soon", "-1", "20000"):
        monkeypatch.setenv("PROBEWATCH_SEND_LINGER_MS", bad)
        with pytest.raises(ValueError, match="PROBEWATCH_SEND_LINGER_MS must be"):
            envs.vllm_send_linger_s()


def test_kill_switch_plugin_imports_nothing_of_vllm(monkeypatch):
    import sys

    import probewatch.server.client.vllm_plugin as plugin

    monkeypatch.setenv("PROBEWATCH_DISABLE", "1")
    before = {m for m in sys.modules if m == "vllm" or m.startswith("vllm.")}
    plugin.register()
    assert {m for m in sys.modules if m == "vllm" or m.startswith("vllm.")} == before


def test_a_caller_cannot_opt_out_unless_the_operator_allows_it():
    """extra_args reach vLLM from any HTTP caller (vllm_xargs): without PROBEWATCH_CALLER_OPT_OUT an
    opt-out keeps the request monitored and says it was asked; opting in is always honoured."""
    for off in (False, 0, "off", "false"):
        p = request_policy({"probewatch": off}, True, allow_opt_out=False)
        assert p.monitored and p.opt_out_ignored
        p = request_policy({"probewatch": off}, True, allow_opt_out=True)
        assert not p.monitored and not p.opt_out_ignored
    assert request_policy({"probewatch": True}, False, allow_opt_out=False).monitored  # opt-in mode
    assert not request_policy({}, False, allow_opt_out=False).monitored  # the operator chose opt-in
    assert not request_policy({"probewatch": "on"}, True, allow_opt_out=False).opt_out_ignored


def test_caller_opt_out_setting(monkeypatch):
    from probewatch import envs

    monkeypatch.delenv("PROBEWATCH_CALLER_OPT_OUT", raising=False)
    assert envs.vllm_caller_opt_out() is False
    monkeypatch.setenv("PROBEWATCH_CALLER_OPT_OUT", "1")
    assert envs.vllm_caller_opt_out() is True
