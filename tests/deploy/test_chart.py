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
    # sidecar mode: the port listens on 127.0.0.1, which the kubelet's own gRPC probe (pod IP) cannot
    # reach: the exec probe checks from inside the container
    sidecar_mode = container(pod_spec(objects(chartkit, rendered["default"])), "probewatch")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        cmd = sidecar_mode[probe]["exec"]["command"]
        assert cmd[:3] == ["probewatch-healthcheck", "--address", "127.0.0.1:50051"] and "--tls" not in cmd
    # standalone plaintext (explicitly insecure): the kubelet's native gRPC probe
    insecure = chartkit.render({"mode": "standalone", "auth": {"allowInsecureStandalone": True}})
    plain = container(pod_spec(objects(chartkit, insecure)), "probewatch")
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
    # vLLM mode: `vllm serve` on the sidecar's model folder; the plugin's settings in the environment
    assert vllm["command"] == ["vllm", "serve"]
    assert vllm["args"] == [
        "/models/Qwen2.5-7B-Instruct",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--served-model-name",
        "qwen2.5-7b-instruct",
        "--max-model-len",
        "8192",
    ]
    env = env_of(vllm)
    assert env["PROBEWATCH_SIDECAR"] == "127.0.0.1:50051"
    assert env["PROBEWATCH_MODE"] == "pushdown" and env["PROBEWATCH_CLIENT_METRICS_PORT"] == "9401"
    assert int(env["PROBEWATCH_WAIT_S"]) > 0
    assert {"name": "pw-client", "containerPort": 9401, "protocol": "TCP"} in vllm["ports"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    assert vllm["startupProbe"]["failureThreshold"] * vllm["startupProbe"]["periodSeconds"] >= 600
    assert {"name": "shm", "mountPath": "/dev/shm"} in vllm["volumeMounts"]
    assert {"name": "models", "mountPath": "/models"} in vllm["volumeMounts"]
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
    # sidecar series, vLLM's own vllm:* series, and the plugin's probewatch_client_* series
    assert {e["port"] for e in vllm_sm["spec"]["endpoints"]} == {"metrics", "http", "pw-client"}


def test_vllm_mode_needs_a_model_folder(chartkit):
    values = {"inference": {"vllm": {"enabled": True}}}  # sidecar.model is a registry name by default
    with pytest.raises(Exception, match="must be a model folder path"):
        chartkit.render(values)
    rendered = chartkit.render({"inference": {"vllm": {"enabled": True, "model": "/models/m", "mode": "rows"}}})
    objs = objects(chartkit, rendered)
    c = container(pod_spec(objs), "inference")
    assert c["args"][:5] == ["/models/m", "--host", "0.0.0.0", "--port", "8000"]
    assert env_of(c)["PROBEWATCH_MODE"] == "rows"
    assert "pw-client" in {p["name"] for p in objs["Service"]["spec"]["ports"]}


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


def test_sidecar_mode_binds_loopback_and_keeps_grpc_off_the_service(chartkit, rendered):
    objs = objects(chartkit, rendered["default"])
    sidecar = container(pod_spec(objs), "probewatch")
    args = sidecar["args"]
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--metrics-host") + 1] == "0.0.0.0"  # Prometheus scrapes the pod IP
    assert {p["name"] for p in objs["Service"]["spec"]["ports"]} == {"metrics", "http"}
    assert {p["name"] for p in sidecar["ports"]} == {"metrics"}
    # security defaults: no reflection, no verbatim text, a retention, drain within the pod's grace
    assert "--reflection" not in args and "--auth-token-file" not in args
    assert args[args.index("--store-text") + 1] == "redacted"
    assert args[args.index("--retention-days") + 1] == "30"
    grace = float(args[args.index("--shutdown-grace") + 1])
    assert grace == 20 and grace < pod_spec(objs)["terminationGracePeriodSeconds"]


def test_standalone_needs_mutual_tls_or_an_explicit_opt_in(chartkit, rendered):
    import helm_python

    for values in ({"mode": "standalone"}, {"mode": "standalone", "tls": {"enabled": True, "secretName": "t"}}):
        with pytest.raises(helm_python.HelmError) as info:
            chartkit.render(values)
        assert "enable mutual TLS" in str(info.value) and "auth.allowInsecureStandalone" in str(info.value)
    objs = objects(chartkit, rendered["standalone"])  # the example: mutual TLS + token
    args = container(pod_spec(objs), "probewatch")["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0" and "--tls-client-ca" in args
    assert {p["name"] for p in objs["Service"]["spec"]["ports"]} == {"grpc", "metrics"}
    insecure = objects(chartkit, chartkit.render({"mode": "standalone", "auth": {"allowInsecureStandalone": True}}))
    assert (
        "PLAINTEXT"
        in chartkit.render({"mode": "standalone", "auth": {"allowInsecureStandalone": True}})[
            "probewatch/templates/NOTES.txt"
        ]
    )
    chartkit.validate_rendered(chartkit.render({"mode": "standalone", "auth": {"allowInsecureStandalone": True}}))
    assert "grpc" in {p["name"] for p in insecure["Service"]["spec"]["ports"]}
    # the sidecar itself refuses 0.0.0.0 unauthenticated: only the explicit opt-in passes --allow-insecure
    assert "--allow-insecure" in container(pod_spec(insecure), "probewatch")["args"]
    assert "--allow-insecure" not in args


@pytest.mark.parametrize(
    "values,opted_in",
    [
        (None, False),  # sidecar mode: 127.0.0.1
        ({"mode": "standalone", "auth": {"allowInsecureStandalone": True}}, True),
        (
            {"mode": "standalone", "auth": {"allowInsecureStandalone": True, "tokenSecret": {"name": "pw-token"}}},
            False,  # a token is enough: no opt-in needed
        ),
        ({"mode": "standalone", "tls": {"enabled": True, "secretName": "t", "clientAuth": True}}, False),
    ],
)
def test_rendered_serve_args_pass_the_sidecars_exposure_check(chartkit, values, opted_in):
    """The chart's `probewatch serve` arguments, parsed by the real CLI parser, never hit the sidecar's
    refusal of an unauthenticated non-loopback bind (issue 20, item 12)."""
    from probewatch.cli.main import build_parser
    from probewatch.server.sidecar.config import insecure_exposure

    rendered = chartkit.render(values or {})
    args = build_parser().parse_args(["serve", *container(pod_spec(objects(chartkit, rendered)), "probewatch")["args"]])
    exposure = insecure_exposure(
        args.host,
        args.port,
        token=args.auth_token_file is not None,
        mutual_tls=bool(args.tls_cert and args.tls_client_ca),
    )
    assert args.allow_insecure is opted_in
    assert (exposure is not None) is opted_in  # --allow-insecure only where it is needed


def test_token_and_api_key_secrets(chartkit, rendered):
    objs = objects(chartkit, rendered["standalone"])
    spec = pod_spec(objs)
    sidecar = container(spec, "probewatch")
    assert sidecar["args"][sidecar["args"].index("--auth-token-file") + 1] == "/etc/probewatch/auth/token"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["auth-token"]["secret"] == {
        "secretName": "probewatch-token",
        "items": [{"key": "token", "path": "token"}],
        "defaultMode": 0o440,
    }
    assert {"name": "auth-token", "mountPath": "/etc/probewatch/auth", "readOnly": True} in sidecar["volumeMounts"]
    # sidecar mode: the inference container gets the token file for its attach client, and its API key
    values = {"auth": {"tokenSecret": {"name": "pw-token"}}, "inference": {"apiKeySecret": {"name": "pw-api"}}}
    rendered_values = chartkit.render(values)
    chartkit.validate_rendered(rendered_values)
    inference = container(pod_spec(objects(chartkit, rendered_values)), "inference")
    env = env_of(inference)
    assert env["PROBEWATCH_AUTH_TOKEN_FILE"] == "/etc/probewatch/auth/token"
    assert env["PROBEWATCH_API_KEY"] == {"secretKeyRef": {"name": "pw-api", "key": "api-key"}}
    assert {"name": "auth-token", "mountPath": "/etc/probewatch/auth", "readOnly": True} in inference["volumeMounts"]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"mode": "daemonset"}, "mode"),
        ({"sidecar": {"shutdownGraceSeconds": 30}}, "must be below terminationGracePeriodSeconds"),
        ({"sidecar": {"healthProbe": "grpc"}}, "cannot work in sidecar mode"),
        ({"incidents": {"storeText": "everything"}}, "storeText"),
        ({"sidecar": {"grpcPort": 0}}, "grpcPort"),
        ({"sidecarr": {}}, "sidecarr"),
        ({"tls": {"enabled": True}}, "tls.secretName"),
        (
            {"mode": "standalone", "auth": {"allowInsecureStandalone": True}, "sidecar": {"nativeSidecar": True}},
            "nativeSidecar",
        ),
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


def test_pseudonym_key_secret_and_private_metadata_keys(chartkit, rendered):
    """incidents.pseudonymKeys mounts the key Secret read-only for the sidecar alone and passes
    --pseudonym-key-file; incidents.privateMetadataKeys become --private-metadata-key flags the real CLI
    parses (issue 20, items 7 and 8)."""
    from probewatch.cli.main import build_parser

    default = container(pod_spec(objects(chartkit, rendered["default"])), "probewatch")["args"]
    assert "--pseudonym-key-file" not in default and "--private-metadata-key" not in default
    values = {
        "incidents": {
            "pseudonymKeys": {"secretName": "pw-pseudonym"},
            "privateMetadataKeys": ["tenant", "*shard*"],
        }
    }
    out = chartkit.render(values)
    chartkit.validate_rendered(out)
    spec = pod_spec(objects(chartkit, out))
    sidecar = container(spec, "probewatch")
    args = build_parser().parse_args(["serve", *sidecar["args"]])
    assert str(args.pseudonym_key_file) == "/etc/probewatch/pseudonym/keys"
    assert args.private_metadata_key == ["tenant", "*shard*"]
    assert {v["name"]: v for v in spec["volumes"]}["pseudonym-keys"]["secret"] == {
        "secretName": "pw-pseudonym",
        "items": [{"key": "keys", "path": "keys"}],
        "defaultMode": 0o440,
    }
    mount = {"name": "pseudonym-keys", "mountPath": "/etc/probewatch/pseudonym", "readOnly": True}
    assert mount in sidecar["volumeMounts"]
    assert mount not in container(spec, "inference").get("volumeMounts", [])


def test_queue_bytes_value_reaches_serve_and_parses(chartkit, rendered):
    """sidecar.queueBytes becomes --queue-bytes (a Kubernetes quantity the CLI parses); empty: derived."""
    from probewatch.cli.main import build_parser

    default_args = container(pod_spec(objects(chartkit, rendered["default"])), "probewatch")["args"]
    assert "--queue-bytes" not in default_args
    args = container(pod_spec(objects(chartkit, chartkit.render({"sidecar": {"queueBytes": "512Mi"}}))), "probewatch")[
        "args"
    ]
    assert args[args.index("--queue-bytes") + 1] == "512Mi"
    assert build_parser().parse_args(["serve", *args]).queue_bytes == 512 * 1024 * 1024


def test_client_rate_value_reaches_serve_and_parses(chartkit, rendered):
    """sidecar.maxClientMBPerSecond becomes --max-client-mb-per-s; 0 (the default) leaves reads unpaced."""
    from probewatch.cli.main import build_parser

    default_args = container(pod_spec(objects(chartkit, rendered["default"])), "probewatch")["args"]
    assert "--max-client-mb-per-s" not in default_args
    values = {"sidecar": {"maxClientMBPerSecond": 48}}
    args = container(pod_spec(objects(chartkit, chartkit.render(values))), "probewatch")["args"]
    assert args[args.index("--max-client-mb-per-s") + 1] == "48"
    assert build_parser().parse_args(["serve", *args]).max_client_mb_per_s == 48.0
