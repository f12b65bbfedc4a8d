"""A synthetic vLLM source tree written from the plugin's own requirement lists (no vLLM needed).

`write_tree(root)` writes, for every `Requirement` the plugin declares, the smallest Python source
that satisfies it (modules, classes, methods with the required signature prefix, `self.x = ...`
attributes, module functions); `drop` leaves chosen requirements out so a test can watch the check
fail on exactly them. A model registry and a `LlamaForCausalLM(SupportsEagle3)` are added for the
preflight's model check.
"""

from __future__ import annotations

import zipfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from probewatch.server.client.vllm_plugin.adapters import ADAPTERS
from probewatch.server.client.vllm_plugin.contract import ENGINE_CONTRACT, Requirement

ALL = (*ENGINE_CONTRACT, *(r for a in ADAPTERS for r in a.contract))


def write_tree(root: Path, drop: Iterable[Requirement] = (), version: str = "0.99.0") -> Path:
    dropped = set(drop)
    modules: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))  # module -> class -> lines
    functions: dict[str, list[str]] = defaultdict(list)
    for req in ALL:
        if req in dropped:
            modules[req.module]  # the module still exists
            if req.cls:
                modules[req.module][req.cls]
            continue
        params = ", ".join([*req.prefix, *(f"{p}=None" for p in req.params)])
        if req.kind == "function":
            functions[req.module].append(f"def {req.name}({params}):\n    return None\n")
        elif req.kind == "method":
            modules[req.module][req.cls].append(
                f"    def {req.name}(self{', ' if params else ''}{params}):\n        return None\n"
            )
        elif req.kind == "attr":
            modules[req.module][req.cls].append(f"    def _set_{req.name}(self):\n        self.{req.name} = None\n")
        elif req.kind == "not_overridden":
            modules[req.module][req.cls]
    for module in {*modules, *functions}:
        lines = ["# synthetic vLLM source (tests/server/client/vllm_plugin/vllm_source.py)\n"]
        lines += functions.get(module, [])
        for cls, body in modules.get(module, {}).items():
            lines.append(f"class {cls}:\n" + ("".join(body) if body else "    pass\n"))
        _write(root, module, "\n".join(lines))
    _write(root, "vllm._version", f'__version__ = version = "{version}"\n')
    _write(
        root,
        "vllm.model_executor.models.registry",
        '_TEXT_GENERATION_MODELS = {"LlamaForCausalLM": ("llama", "LlamaForCausalLM"), '
        '"GPT2LMHeadModel": ("gpt2", "GPT2LMHeadModel")}\n',
    )
    llama = (root / "vllm/model_executor/models/llama.py").read_text()
    _write(
        root,
        "vllm.model_executor.models.llama",
        "from vllm.model_executor.models.interfaces import SupportsEagle3\n"
        + llama.replace("class LlamaForCausalLM:", "class LlamaForCausalLM(SupportsEagle3):"),
    )
    _write(root, "vllm.model_executor.models.gpt2", "class GPT2LMHeadModel:\n    pass\n")
    return root


def _write(root: Path, module: str, text: str) -> None:
    path = root / (module.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(root).parents:
        init = root / parent / "__init__.py"
        if parent != Path(".") and not init.exists():
            init.write_text("")
    path.write_text(text)


def zip_tree(root: Path, wheel: Path) -> Path:
    """The tree packed like a wheel (`vllm/...` members)."""
    with zipfile.ZipFile(wheel, "w") as zf:
        for path in sorted(root.rglob("*.py")):
            zf.write(path, path.relative_to(root).as_posix())
    return wheel
