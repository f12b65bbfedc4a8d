"""The Helm chart, rendered by Helm's own Go library and validated against Kubernetes schemas.

Rendering uses helm-python-sdk (Helm v4's SDK as a shared library): templates, sprig, `.Files.Get`
and values.schema.json behave as under `helm template`. Built-in kinds validate strictly against
kubernetes-validate's OpenAPI schemas; ServiceMonitor/PrometheusRule against a strict JSON Schema
from the Prometheus Operator CRD models (cloudcoil-models-prometheus-operator). What no test here
can check: that a cluster admits and runs the pods (no cluster on this machine).
"""

from __future__ import annotations

import json

import pytest

from tests.deploy.conftest import CHART, DASHBOARD

VARIANTS = ["default", "standalone", "vllm"]


@pytest.fixture(scope="module")
def rendered(chartkit):
    """Variant name -> {template path: text} (the three value sets CI renders)."""
    return {name: chartkit.render(values) for name, values in chartkit.example_values().items()}


def objects(chartkit, rendered_variant) -> dict[str, dict]:
    return {obj["kind"]: obj for _, obj in chartkit.manifests(rendered_variant)}


def pod_spec(objs: dict) -> dict:
    return objs["Deployment"]["spec"]["template"]["spec"]


def container(spec: dict, name: str) -> dict:
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name!r} in {[c['name'] for c in spec.get('containers', [])]}")


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def test_example_value_sets_exist(chartkit):
    assert set(chartkit.example_values()) == set(VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_validates(chartkit, rendered, variant):
    seen = chartkit.validate_rendered(rendered[variant])
    kinds = {s.split("/")[0] for s in seen}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap"} <= kinds
    if variant != "default":
        assert {"ServiceMonitor", "PrometheusRule"} <= kinds


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict_is_clean(chartkit, variant):
    result = chartkit.lint(chartkit.example_values()[variant])
    problems = [m for m in result["messages"] if m["severity"] >= 2] + result["errors"]
    assert not problems, problems


def test_validators_reject_broken_manifests(chartkit, rendered):
    """The validation is not vacuous: an unknown field or a wrong type fails for each schema family."""
    import copy

    objs = objects(chartkit, rendered["standalone"])
    bad_deploy = copy.deepcopy(objs["Deployment"])
    bad_deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    bad_sm = copy.deepcopy(objs["ServiceMonitor"])
    bad_sm["spec"]["endpoints"][0]["intervall"] = "30s"
    bad_rule = copy.deepcopy(objs["PrometheusRule"])
    bad_rule["spec"]["groups"][0]["rules"][0]["for"] = "two minutes"
    bad_port = copy.deepcopy(objs["Service"])
    bad_port["spec"]["ports"][0]["port"] = "grpc"
    for obj in (bad_deploy, bad_sm, bad_rule, bad_port):
        with pytest.raises(chartkit.ValidationError):
            chartkit.validate_object(obj)


def test_sidecar_mode_puts_probewatch_in_the_inference_pod(chartkit, rendered):
    objs = objects(chartkit, rendered["default"])
    spec = pod_spec(objs)
    assert [c["name"] for c in spec["containers"]] == ["inference", "probewatch"]
    inference, sidecar = container(spec, "inference"), container(spec, "probewatch")
    # The inference server finds its sidecar on the pod's loopback.
    assert env_of(inference)["PROBEWATCH_SIDECAR"] == "127.0.0.1:50051"
    assert inference["command"] == ["probewatch"] and inference["args"][0] == "run"
    # The reference model is fetched once by the init container into the shared PROBEWATCH_HOME.
    fetch = container(spec, "fetch-model")
    assert fetch["command"] == ["probewatch", "models", "fetch", "smollm2-135m-instruct"]
    for c in (fetch, sidecar, inference):
        assert {"name": "home", "mountPath": "/var/lib/probewatch"} in c["volumeMounts"]
    args = sidecar["args"]
    assert args[args.index("--port") + 1] == "50051" and args[args.index("--metrics-port") + 1] == "9400"
    assert args[args.index("--model") + 1] == "smollm2-135m-instruct"
    assert args[args.index("--queue-size") + 1] == "1024"  # what ProbewatchQueueNearFull divides by
    assert "--bundles" not in args  # the shipped bundles for the model
    assert env_of(sidecar)["PROBEWATCH_INCIDENT_DB"] == "/var/lib/probewatch/incidents.sqlite3"
    # No ServiceMonitor/PrometheusRule unless asked for (the CRDs may not exist in the cluster).
    assert "ServiceMonitor" not in objs and "PrometheusRule" not in objs


def test_sidecar_container_is_locked_down(chartkit, rendered):
    for variant in VARIANTS:
        spec = pod_spec(objects(chartkit, rendered[variant]))
        sc = container(spec, "probewatch")["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert spec["automountServiceAccountToken"] is False
        # A read-only root needs writable /tmp and PROBEWATCH_HOME.
        mounts = {m["mountPath"] for m in container(spec, "probewatch")["volumeMounts"]}
        assert {"/tmp", "/var/lib/probewatch"} <= mounts


def test_health_probes_go_through_grpc_health(chartkit, rendered):
    plain = container(pod_spec(objects(chartkit, rendered["default"])), "probewatch")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert plain[probe]["grpc"] == {"port": 50051, "service": ""}
    # With TLS the kubelet's native gRPC probe cannot verify the server: the exec health check does.
    tls = container(pod_spec(objects(chartkit, rendered["standalone"])), "probewatch")
    cmd = tls["livenessProbe"]["exec"]["command"]
    assert cmd[:3] == ["probewatch-healthcheck", "--address", "127.0.0.1:50051"]
    assert "--tls" in cmd and cmd[cmd.index("--ca") + 1] == "/etc/probewatch/tls/ca.crt"
    assert cmd[cmd.index("--server-name") + 1] == "probewatch.llm.svc"


def test_standalone_variant(chartkit, rendered):
    objs = objects(chartkit, rendered["standalone"])
    spec = pod_spec(objs)
    assert [c["name"] for c in spec["containers"]] == ["probewatch"]
    assert "initContainers" not in spec  # the model is a mounted folder: nothing to fetch
    sidecar = container(spec, "probewatch")
    args = sidecar["args"]
    assert args[args.index("--model") + 1] == "/models/Qwen2.5-7B-Instruct"
    assert args[args.index("--bundles") + 1] == "/bundles/deception-qwen"
    assert args[args.index("--tls-cert") + 1] == "/etc/probewatch/tls/tls.crt"
    assert sidecar["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(sidecar)["PROBEWATCH_WEBHOOK_URL"] == {"secretKeyRef": {"name": "probewatch-webhook", "key": "url"}}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["home"]["persistentVolumeClaim"]["claimName"] == "probewatch-home"
    assert volumes["tls"]["secret"]["secretName"] == "probewatch-tls"
    assert volumes["bundle-cm-deception-qwen"]["configMap"]["name"] == "deception-qwen"
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True and mounts["models"]["mountPath"] == "/models"
    assert objs["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert objs["ConfigMap"]["metadata"]["namespace"] == "monitoring"  # where Grafana's sidecar looks
    ports = {p["name"] for p in objs["Service"]["spec"]["ports"]}
    assert ports == {"grpc", "metrics"}


def test_vllm_variant(chartkit, rendered):
    objs = objects(chartkit, rendered["vllm"])
    spec = pod_spec(objs)
    vllm = container(spec, "vllm")
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(vllm)["PROBEWATCH_SIDECAR"] == "127.0.0.1:50051"
    assert {"name": "shm", "mountPath": "/dev/shm"} in vllm["volumeMounts"]
    # Native sidecar: probewatch is an init container that keeps running (restartPolicy Always),
    # so it is up before vLLM starts.
    assert [c["name"] for c in spec["containers"]] == ["vllm"]
    sidecar = [c for c in spec["initContainers"] if c["name"] == "probewatch"][0]
    assert sidecar["restartPolicy"] == "Always"
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in sidecar["volumeMounts"]
    assert sidecar["resources"].get("limits", {}).get("nvidia.com/gpu") is None  # scoring on CPU
    args = sidecar["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--bundles"] == [
        "/bundles/deception-qwen",
        "/bundles/refusal-qwen",
    ]


def test_service_and_servicemonitor_find_the_pod(chartkit, rendered):
    for variant in ("standalone", "vllm"):
        objs = objects(chartkit, rendered[variant])
        pod_labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
        svc = objs["Service"]
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        container_ports = {
            p["name"]
            for c in pod_spec(objs)["containers"] + pod_spec(objs).get("initContainers", [])
            for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in container_ports
        sm = objs["ServiceMonitor"]
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        svc_ports = {p["name"] for p in svc["spec"]["ports"]}
        endpoints = {e["port"]: e for e in sm["spec"]["endpoints"]}
        assert set(endpoints) <= svc_ports
        # The sidecar's series get job="probewatch", which the alert rules select on.
        assert endpoints["metrics"]["relabelings"] == [
            {"action": "replace", "targetLabel": "job", "replacement": "probewatch"}
        ]
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    vllm_sm = objects(chartkit, rendered["vllm"])["ServiceMonitor"]
    assert {e["port"] for e in vllm_sm["spec"]["endpoints"]} == {"metrics", "http"}


def test_dashboard_configmap_embeds_the_dashboard_file(chartkit, rendered):
    cm = objects(chartkit, rendered["default"])["ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = cm["data"]["probewatch-dashboard.json"]
    assert json.loads(text) == json.loads(DASHBOARD.read_text())
    assert text.strip() == DASHBOARD.read_text().strip()
    # The chart reads the dashboard through a link, not a copy.
    link = CHART / "dashboards" / "probewatch-dashboard.json"
    assert link.is_symlink() and link.resolve() == DASHBOARD.resolve()


def test_prometheusrule_matches_the_plain_rule_file(chartkit, rendered):
    from tests.deploy.conftest import RULES_FILE

    assert RULES_FILE.read_text() == chartkit.rules_file_text(), (
        "deploy/prometheus/probewatch-rules.yaml is stale: "
        "python deploy/scripts/render_chart.py --export-rules deploy/prometheus/probewatch-rules.yaml"
    )
    pr = objects(chartkit, rendered["standalone"])["PrometheusRule"]
    import yaml

    assert pr["spec"] == yaml.safe_load(RULES_FILE.read_text())


def test_rule_values_are_honoured(chartkit):
    spec = chartkit.rules_from_chart(
        {
            "prometheusRule": {
                "job": "pw",
                "disabled": ["ProbewatchNoScores"],
                "alertRate": {"thresholds": {"deception": 0.01}},
                "additionalRules": [{"alert": "MyTeamRule", "expr": "vector(1)", "labels": {"severity": "info"}}],
            }
        }
    )
    rules = {r["alert"]: r for r in spec["groups"][0]["rules"]}
    assert "ProbewatchNoScores" not in rules and "MyTeamRule" in rules
    assert rules["ProbewatchSidecarDown"]["expr"] == 'up{job="pw"} == 0'
    assert ") > 0.01\n" in rules["ProbewatchDeceptionAlertRateHigh"]["expr"]
    # The default thresholds of the other behaviours stay (maps merge).
    assert ") > 0.25\n" in rules["ProbewatchRefusalAlertRateHigh"]["expr"]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"mode": "daemonset"}, "mode"),
        ({"sidecar": {"grpcPort": 0}}, "grpcPort"),
        ({"sidecarr": {}}, "sidecarr"),
        ({"tls": {"enabled": True}}, "tls.secretName"),
        ({"mode": "standalone", "sidecar": {"nativeSidecar": True}}, "nativeSidecar"),
        ({"replicaCount": 2, "home": {"persistence": {"enabled": True}}}, "replicaCount"),
        ({"inference": {"image": {"repository": "vllm/vllm-openai"}}}, "inference.image.tag"),
    ],
)
def test_bad_values_fail_with_a_message(chartkit, values, message):
    import helm_python

    with pytest.raises(helm_python.HelmError) as info:
        chartkit.render(values)
    assert message in str(info.value)


def test_gpu_and_native_sidecar_switches(chartkit):
    objs = objects(chartkit, chartkit.render({"sidecar": {"gpu": 2}, "inference": {"gpu": 1}}))
    spec = pod_spec(objs)
    assert container(spec, "probewatch")["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container(spec, "inference")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container(spec, "probewatch")["resources"]["requests"]["cpu"] == "500m"  # defaults kept
    chartkit.validate_rendered(chartkit.render({"sidecar": {"gpu": 2}, "inference": {"gpu": 1}}))


def test_notes_render_for_every_variant(rendered):
    for variant in VARIANTS:
        notes = rendered[variant]["probewatch/templates/NOTES.txt"]
        assert "probewatch incidents list" in notes and "<no value>" not in notes
    assert "PROBEWATCH_SIDECAR=127.0.0.1:50051" in rendered["default"]["probewatch/templates/NOTES.txt"]


def test_packaged_chart_is_self_contained(chartkit, tmp_path):
    """`helm package` resolves the dashboard link into a regular file; the .tgz renders alone."""
    import tarfile

    import helm_python

    helm_python.package(str(CHART), destination=str(tmp_path))
    (tgz,) = tmp_path.glob("probewatch-*.tgz")
    with tarfile.open(tgz) as tar:
        member = tar.getmember("probewatch/dashboards/probewatch-dashboard.json")
        assert member.isfile() and json.loads(tar.extractfile(member).read()) == json.loads(DASHBOARD.read_text())
    rendered = chartkit.render({}, chart=tgz)
    chartkit.validate_rendered(rendered)
