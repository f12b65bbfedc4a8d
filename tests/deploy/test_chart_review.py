"""The chart's fleet incident database (a Secret URL) and its review app (Deployment, Service,
ServiceMonitor, deep links in the alert rules), rendered by Helm's own library and validated."""

from __future__ import annotations

import pytest

FLEET = {
    "incidents": {"database": {"secretName": "probewatch-db", "secretKey": "url"}},
    "review": {
        "enabled": True,
        "publicUrl": "https://review.example.com/",
        "auth": {"trustedHeaders": ["X-Forwarded-User", "X-Auth-Request-Email"], "tokenSecret": "review-tokens"},
    },
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
}


def _by(chartkit, rendered) -> dict[tuple[str, str], dict]:
    return {(obj["kind"], obj["metadata"]["name"]): obj for _, obj in chartkit.manifests(rendered)}


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_fleet_database_url_comes_from_a_secret(chartkit):
    rendered = chartkit.render({"incidents": {"database": {"secretName": "probewatch-db"}}})
    chartkit.validate_rendered(rendered)
    pod = _by(chartkit, rendered)[("Deployment", "probewatch")]["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["containers"] if c["name"] == "probewatch")
    assert _env(sidecar)["PROBEWATCH_INCIDENT_DB"] == {"secretKeyRef": {"name": "probewatch-db", "key": "url"}}
    # without it: the SQLite file in PROBEWATCH_HOME, and no review app
    rendered = chartkit.render({})
    objs = _by(chartkit, rendered)
    sidecar = next(
        c
        for c in objs[("Deployment", "probewatch")]["spec"]["template"]["spec"]["containers"]
        if c["name"] == "probewatch"
    )
    assert _env(sidecar)["PROBEWATCH_INCIDENT_DB"] == "/var/lib/probewatch/incidents.sqlite3"
    assert ("Deployment", "probewatch-review") not in objs


def test_review_app(chartkit):
    rendered = chartkit.render(FLEET)
    chartkit.validate_rendered(rendered)
    objs = _by(chartkit, rendered)
    review = objs[("Deployment", "probewatch-review")]
    pod = review["spec"]["template"]["spec"]
    (app,) = pod["containers"]
    assert app["command"] == ["probewatch"] and app["args"][:5] == ["review", "--host", "0.0.0.0", "--port", "8080"]
    args = " ".join(app["args"])
    assert "--trusted-header X-Forwarded-User --trusted-header X-Auth-Request-Email" in args
    assert "--token-file /etc/probewatch/review/tokens" in args
    assert _env(app)["PROBEWATCH_INCIDENT_DB"] == {"secretKeyRef": {"name": "probewatch-db", "key": "url"}}
    assert app["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert app["securityContext"]["readOnlyRootFilesystem"] and app["securityContext"]["runAsNonRoot"]
    tokens = next(v for v in pod["volumes"] if v["name"] == "review-tokens")
    assert tokens["secret"] == {"secretName": "review-tokens", "items": [{"key": "tokens", "path": "tokens"}]}
    # its Service and ServiceMonitor select the review pods only, and the sidecar's never select them
    labels = review["spec"]["template"]["metadata"]["labels"]
    service = objs[("Service", "probewatch-review")]
    assert service["spec"]["selector"].items() <= labels.items()
    main_selector = objs[("Service", "probewatch")]["spec"]["selector"]
    assert not main_selector.items() <= labels.items()
    assert not objs[("Deployment", "probewatch")]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = objs[("ServiceMonitor", "probewatch-review")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["relabelings"][0]["replacement"] == "probewatch-review"
    # deep links: sidecars put incident pages in webhook payloads; alerts link to the probe's queue
    sidecar = next(
        c
        for c in objs[("Deployment", "probewatch")]["spec"]["template"]["spec"]["containers"]
        if c["name"] == "probewatch"
    )
    assert _env(sidecar)["PROBEWATCH_REVIEW_URL"] == "https://review.example.com/"
    rules = {r["alert"]: r for r in objs[("PrometheusRule", "probewatch")]["spec"]["groups"][0]["rules"]}
    assert (
        rules["ProbewatchDeceptionAlertRateHigh"]["annotations"]["review_url"]
        == "https://review.example.com/?probe={{ $labels.probe }}&status=open"
    )
    assert (
        rules["ProbewatchReviewBacklogGrowing"]["annotations"]["review_url"]
        == "https://review.example.com/?status=open"
    )
    assert 'job="probewatch-review"' in rules["ProbewatchReviewedPrecisionLow"]["expr"]


def test_review_app_behind_a_proxy_container_keeps_metrics_reachable(chartkit):
    proxy = {
        "name": "oauth2-proxy",
        "image": "quay.io/oauth2-proxy/oauth2-proxy:v7.6.0",
        "args": ["--upstream=http://127.0.0.1:8080", "--http-address=0.0.0.0:4180"],
        "ports": [{"name": "oauth", "containerPort": 4180}],
    }
    values = {**FLEET, "review": {**FLEET["review"], "extraContainers": [proxy], "service": {"targetPort": "oauth"}}}
    rendered = chartkit.render(values)
    chartkit.validate_rendered(rendered)
    objs = _by(chartkit, rendered)
    ports = {p["name"]: p for p in objs[("Service", "probewatch-review")]["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "oauth" and ports["review-metrics"]["targetPort"] == "http"
    assert objs[("ServiceMonitor", "probewatch-review")]["spec"]["endpoints"][0]["port"] == "review-metrics"
    names = [c["name"] for c in objs[("Deployment", "probewatch-review")]["spec"]["template"]["spec"]["containers"]]
    assert names == ["review", "oauth2-proxy"]


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"review": {"enabled": True, "auth": {"tokenSecret": "t"}}},
            "review.enabled needs incidents.database.secretName",
        ),
        (
            {"review": {"enabled": True}, "incidents": {"database": {"secretName": "db"}}},
            "review.enabled needs reviewer authentication",
        ),
        ({"review": {"publicUrl": "review.example.com"}}, "publicUrl"),
    ],
)
def test_bad_review_values_fail_with_a_message(chartkit, values, message):
    import helm_python

    with pytest.raises(helm_python.HelmError) as info:
        chartkit.render(values)
    assert message in str(info.value)


def test_review_app_answers_the_charts_hosts_and_probes(chartkit, tmp_path):
    """The rendered args, parsed by the real CLI into a real app on loopback: kubelet probes and
    Prometheus (the pod IP as Host), the Service's names, publicUrl and allowedHosts are answered;
    any other Host (DNS rebinding) gets 400."""
    import argparse

    import httpx

    from probewatch.cli.review_cmd import add_review_arguments, auth_config
    from probewatch.server.inference.server_thread import HTTPServerThread
    from probewatch.server.review.app import create_review_app
    from probewatch.server.store import IncidentStore

    values = {**FLEET, "review": {**FLEET["review"], "allowedHosts": ["*.corp.example"]}}
    rendered = chartkit.render(values)
    chartkit.validate_rendered(rendered)
    objs = _by(chartkit, rendered)
    (app,) = objs[("Deployment", "probewatch-review")]["spec"]["template"]["spec"]["containers"]
    namespace = objs[("Service", "probewatch-review")]["metadata"]["namespace"]
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:alice-token-0123456789abcdef\n")
    argv = [str(tokens) if a == "/etc/probewatch/review/tokens" else a for a in app["args"][1:]]
    parser = argparse.ArgumentParser()
    add_review_arguments(parser, standalone=True)
    args = parser.parse_args(argv)
    assert args.host == "0.0.0.0" and args.allowed_host == [
        "probewatch-review",
        f"probewatch-review.{namespace}",
        f"probewatch-review.{namespace}.svc",
        f"probewatch-review.{namespace}.svc.cluster.local",
        "review.example.com",
        "*.corp.example",
    ]
    store = IncidentStore.open(tmp_path / "incidents.sqlite3")
    server = HTTPServerThread(create_review_app(store, auth_config(args, args.host)), "127.0.0.1", 0).start()
    try:
        probe = app["readinessProbe"]["httpGet"]
        assert "httpHeaders" not in probe  # kubelet sends Host: <pod IP>:<port>
        for host in ("10.244.1.7:8080", "[fd00::7]:8080"):
            assert httpx.get(f"{server.url}{probe['path']}", headers={"Host": host}).status_code == 200
            assert httpx.get(f"{server.url}/metrics", headers={"Host": host}).status_code == 200
        for host in (f"probewatch-review.{namespace}.svc:8080", "review.example.com", "team.corp.example"):
            assert httpx.get(f"{server.url}/healthz", headers={"Host": host}).status_code == 200, host
        assert httpx.get(f"{server.url}/healthz", headers={"Host": "attacker.example"}).status_code == 400
    finally:
        server.stop()
        store.close()


def test_review_grafana_url(chartkit):
    """review.grafanaUrl becomes `--grafana-url` (the app's dashboard links); unset: no flag."""
    values = {**FLEET, "review": {**FLEET["review"], "grafanaUrl": "https://grafana.example.com"}}
    rendered = chartkit.render(values)
    chartkit.validate_rendered(rendered)
    (app,) = _by(chartkit, rendered)[("Deployment", "probewatch-review")]["spec"]["template"]["spec"]["containers"]
    assert "--grafana-url https://grafana.example.com" in " ".join(app["args"])
    (app,) = _by(chartkit, chartkit.render(FLEET))[("Deployment", "probewatch-review")]["spec"]["template"]["spec"][
        "containers"
    ]
    assert "--grafana-url" not in app["args"]
