#!/usr/bin/env python3
"""Render, lint and validate the probewatch Helm chart without a helm binary.

Rendering and linting run Helm's own Go library (Helm v4 SDK through the `helm-python-sdk` wheel,
which bundles it as a shared library; a dev dependency), so templates, `.Files.Get`, sprig functions
and values.schema.json behave exactly as under `helm template` / `helm lint`.

Validation of the rendered manifests:
  * built-in kinds (Deployment, Service, ConfigMap, ...) against the Kubernetes OpenAPI schemas
    shipped by `kubernetes-validate`, strictly (unknown fields are errors);
  * ServiceMonitor / PrometheusRule against a JSON Schema derived from the Prometheus Operator CRD
    models of `cloudcoil-models-prometheus-operator` (generated from the upstream CRDs), with
    unknown fields made errors as well;
  * PrometheusRule expressions with `promtool check rules` when promtool is installed.

    python deploy/scripts/render_chart.py                          # render default values to stdout
    python deploy/scripts/render_chart.py -f helm/probewatch/examples/values-vllm.yaml --validate
    python deploy/scripts/render_chart.py --export-rules deploy/prometheus/probewatch-rules.yaml
    python deploy/scripts/render_chart.py --all-examples --validate --lint   # what CI checks
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "probewatch"
EXAMPLES = CHART / "examples"
RULES_FILE = REPO / "deploy" / "prometheus" / "probewatch-rules.yaml"
KUBERNETES_VERSION = "1.33.0"
RELEASE = "probewatch"
NAMESPACE = "llm"

RULES_HEADER = """\
# probewatch alert rules for a Prometheus without the Prometheus Operator (rule_files: [...]).
# GENERATED from helm/probewatch/templates/prometheusrule.yaml with the chart's default values by
#   python deploy/scripts/render_chart.py --export-rules deploy/prometheus/probewatch-rules.yaml
# Do not edit by hand (tests/deploy fails when the two differ). Selectors assume the sidecar is
# scraped as job="probewatch"; unit tests: deploy/prometheus/tests/ (promtool test rules).
"""


class ValidationError(Exception):
    """A rendered manifest does not validate; the message names the document and the problem."""


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_values(files: list[Path] | None = None, overrides: dict | None = None) -> dict:
    values: dict = {}
    for f in files or []:
        values = deep_merge(values, yaml.safe_load(Path(f).read_text()) or {})
    return deep_merge(values, overrides or {})


def render(
    values: dict | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE, chart: Path = CHART
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` produces them (NOTES.txt included)."""
    import helm_python as helm

    with helm.Chart.load(str(chart)) as ch:
        return ch.render(values or {}, name=release, namespace=namespace, is_install=True)


def manifests(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    """(template path, object) for every non-empty YAML document (NOTES.txt left out)."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def lint(values: dict | None = None, chart: Path = CHART) -> dict[str, Any]:
    import helm_python as helm

    return helm.lint(str(chart), values or {}, strict=True, kube_version=KUBERNETES_VERSION)


def example_values() -> dict[str, dict]:
    """The value sets CI renders: the chart defaults and every examples/values-*.yaml."""
    sets = {"default": {}}
    for f in sorted(EXAMPLES.glob("values-*.yaml")):
        sets[f.stem.removeprefix("values-")] = load_values([f])
    return sets


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Copy of a JSON Schema where every object with declared properties rejects unknown ones."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_schema(kind: str) -> dict:
    """Strict JSON Schema of a Prometheus Operator kind, from the CRD-generated cloudcoil models."""
    from cloudcoil.models.prometheus_operator import v1

    model = {"ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}[kind]
    return _strict(model.model_json_schema(by_alias=True, mode="validation"))


def _innermost(error):
    import jsonschema

    while error.context:
        error = jsonschema.exceptions.best_match(error.context)
    return error


def validate_object(obj: dict, *, where: str = "", k8s_version: str = KUBERNETES_VERSION) -> None:
    """Raise ValidationError unless `obj` validates against its kind's schema."""
    kind = obj.get("kind")
    api = obj.get("apiVersion", "")
    label = f"{where} {kind}/{obj.get('metadata', {}).get('name')}".strip()
    if api.startswith("monitoring.coreos.com/"):
        import jsonschema

        if api != "monitoring.coreos.com/v1" or kind not in {"ServiceMonitor", "PrometheusRule"}:
            raise ValidationError(f"{label}: no schema for {api} {kind}")
        # The cloudcoil models describe metadata as ObjectMeta; the schema wants plain JSON.
        errors = sorted(jsonschema.Draft202012Validator(crd_schema(kind)).iter_errors(obj), key=str)
        if errors:
            # Optional fields are anyOf[schema, null]: report the innermost reason, not the union.
            errors = [_innermost(e) for e in errors]
            details = "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])
            raise ValidationError(f"{label}: {details}")
        return
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError
    from kubernetes_validate.utils import ValidationError as KVError

    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except KVError as exc:
        raise ValidationError(f"{label}: {exc.message} at {'/'.join(map(str, exc.path))}") from None
    except SchemaNotFoundError as exc:
        raise ValidationError(f"{label}: no Kubernetes schema: {exc}") from None


def promtool() -> str | None:
    return shutil.which("promtool")


def check_rules_with_promtool(groups: dict) -> str:
    """`promtool check rules` on the groups; returns its output, raises ValidationError on failure."""
    tool = promtool()
    if tool is None:
        raise FileNotFoundError("promtool not installed")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(groups, fh, sort_keys=False)
        path = fh.name
    try:
        proc = subprocess.run([tool, "check", "rules", path], capture_output=True, text=True, timeout=60)
    finally:
        Path(path).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise ValidationError(f"promtool check rules failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def validate_rendered(
    rendered: dict[str, str], *, k8s_version: str = KUBERNETES_VERSION, with_promtool: bool = True
) -> list[str]:
    """Validate every manifest; returns 'Kind/name' for each validated object."""
    seen = []
    for path, obj in manifests(rendered):
        validate_object(obj, where=path, k8s_version=k8s_version)
        if obj["kind"] == "PrometheusRule" and with_promtool and promtool():
            check_rules_with_promtool({"groups": obj["spec"]["groups"]})
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].endswith("-dashboard"):
            for _key, text in obj["data"].items():
                json.loads(text)  # the embedded dashboard must survive templating as valid JSON
        seen.append(f"{obj['kind']}/{obj['metadata']['name']}")
    return seen


# ---------------------------------------------------------------------------------------------
# The plain rule file
# ---------------------------------------------------------------------------------------------


class _LiteralDumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_LiteralDumper.add_representer(str, _str_presenter)


def rules_from_chart(values: dict | None = None) -> dict:
    """The PrometheusRule's `spec` ({"groups": [...]}) rendered with the given values."""
    vals = deep_merge(values or {}, {"prometheusRule": {"enabled": True}})
    for _, obj in manifests(render(vals)):
        if obj["kind"] == "PrometheusRule":
            return obj["spec"]
    raise ValidationError("the chart rendered no PrometheusRule")


def rules_file_text(values: dict | None = None) -> str:
    body = yaml.dump(rules_from_chart(values), Dumper=_LiteralDumper, sort_keys=False, width=4096, allow_unicode=True)
    return RULES_HEADER + body


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-f", "--values", type=Path, action="append", default=[], help="values file (repeatable)")
    parser.add_argument(
        "--set-json",
        action="append",
        default=[],
        help='values overrides as JSON, e.g. \'{"mode": "standalone"}\' (repeatable)',
    )
    parser.add_argument("--release", default=RELEASE)
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--validate", action="store_true", help="validate every rendered manifest")
    parser.add_argument("--lint", action="store_true", help="helm lint --strict with these values")
    parser.add_argument(
        "--all-examples",
        action="store_true",
        help="render (and --validate/--lint) the defaults and every examples/values-*.yaml",
    )
    parser.add_argument(
        "--export-rules",
        type=Path,
        default=None,
        help="write the default-values PrometheusRule groups as a plain rule file",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the manifests")
    args = parser.parse_args(argv)

    if args.export_rules:
        args.export_rules.write_text(rules_file_text())
        print(f"wrote {args.export_rules}", file=sys.stderr)
        return 0

    overrides: dict = {}
    for text in args.set_json:
        overrides = deep_merge(overrides, json.loads(text))
    if args.all_examples:
        sets = {name: deep_merge(vals, overrides) for name, vals in example_values().items()}
    else:
        sets = {"values": load_values(args.values, overrides)}

    status = 0
    for name, values in sets.items():
        rendered = render(values, release=args.release, namespace=args.namespace)
        if not args.quiet:
            for path, text in sorted(rendered.items()):
                if text.strip():
                    print(f"---\n# Source: {path}\n{text.strip()}" if not path.endswith("NOTES.txt") else "", end="\n")
        if args.lint:
            result = lint(values)
            problems = [m for m in result.get("messages", []) if m.get("severity", 0) >= 2] + result.get("errors", [])
            print(f"[{name}] helm lint: {len(problems)} problem(s)", file=sys.stderr)
            for m in problems:
                print(f"  {m}", file=sys.stderr)
            status |= bool(problems)
        if args.validate:
            try:
                seen = validate_rendered(rendered)
                print(f"[{name}] valid: {', '.join(seen)}", file=sys.stderr)
            except ValidationError as exc:
                print(f"[{name}] INVALID: {exc}", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
