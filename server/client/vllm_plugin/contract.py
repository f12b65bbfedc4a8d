"""The vLLM version contract: every class, method, attribute and signature the plugin relies on.

Each runner adapter lists what it touches as `Requirement`s (`adapters/*.py`, `CONTRACT`); the
engine-level ones (scheduler output, scheduler, model interfaces) are `ENGINE_CONTRACT` here. They
are checked against vLLM's *source*, parsed with `ast`, never imported: so one check covers the
installed vLLM (at plugin start-up and in `probewatch vllm check`) and any release's wheel read
straight from the zip (`make test-vllm-contract`, no CUDA needed). A renamed method, a dropped
attribute or a reordered signature in a new release is reported by name before a user finds it.

What "present" means:
- `method`: a `def` in the class or a base class resolved inside vLLM's source (imports followed);
  `prefix` names its first parameters after `self`, in order (the wrapper passes them positionally);
  `params` must exist anywhere in the signature (or be absorbed by `**kwargs`).
- `attr`: assigned as `self.<name>` in any method, a class-level (annotated) assignment such as a
  dataclass field or NamedTuple field, or a property, in the class or a base.
- `function`: a module-level `def` (same parameter rules).
- `not_overridden`: the class does not redefine the name (a class-level patch on its base would
  then be bypassed): checked on the class itself only.
"""

from __future__ import annotations

import ast
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

Kind = Literal["method", "attr", "function", "not_overridden", "module"]


@dataclass(frozen=True)
class Requirement:
    module: str  # dotted, e.g. "vllm.v1.worker.gpu_model_runner"
    name: str = ""  # class member or function name ("" for kind 'module')
    cls: str = ""  # class name ("" for module-level functions and modules)
    kind: Kind = "method"
    prefix: tuple[str, ...] = ()  # first parameters after self, in this order
    params: tuple[str, ...] = ()  # parameters that must exist (or be absorbed by **kwargs)
    why: str = ""  # what the plugin does with it (printed with a violation)

    def __str__(self) -> str:
        where = ".".join(p for p in (self.module, self.cls, self.name) if p)
        sig = ""
        if self.prefix or self.params:
            sig = "(" + ", ".join([*self.prefix, *(f"{p}=" for p in self.params)]) + ")"
        return f"{where}{sig}" if self.kind != "not_overridden" else f"{where} (not overridden)"


@dataclass
class Violation:
    requirement: Requirement
    problem: str

    def __str__(self) -> str:
        why = f" [{self.requirement.why}]" if self.requirement.why else ""
        return f"{self.requirement}: {self.problem}{why}"


@dataclass
class ContractResult:
    source: str
    checked: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


# -- the engine-level contract (every runner) -------------------------------------------------------------
_OUT = "vllm.v1.core.sched.output"
ENGINE_CONTRACT: tuple[Requirement, ...] = (
    Requirement(_OUT, "scheduled_new_reqs", "SchedulerOutput", "attr", why="opens new requests"),
    Requirement(_OUT, "scheduled_cached_reqs", "SchedulerOutput", "attr", why="resumed requests"),
    Requirement(_OUT, "num_scheduled_tokens", "SchedulerOutput", "attr", why="self-check: rows per request"),
    Requirement(_OUT, "total_num_scheduled_tokens", "SchedulerOutput", "attr", why="self-check: rows per step"),
    Requirement(_OUT, "finished_req_ids", "SchedulerOutput", "attr", why="closes aborted / finished requests"),
    Requirement(_OUT, "scheduled_spec_decode_tokens", "SchedulerOutput", "attr", why="draft rows held until accepted"),
    Requirement(_OUT, "req_id", "NewRequestData", "attr"),
    Requirement(_OUT, "prompt_token_ids", "NewRequestData", "attr"),
    Requirement(_OUT, "sampling_params", "NewRequestData", "attr", why="per-request policy (extra_args)"),
    Requirement(_OUT, "num_computed_tokens", "NewRequestData", "attr", why="first position (prefix cache hits)"),
    Requirement(_OUT, "req_ids", "CachedRequestData", "attr"),
    Requirement(
        "vllm.v1.core.sched.scheduler", "_free_request", "Scheduler", prefix=("request",), why="closes at finish"
    ),
    Requirement("vllm.v1.request", "request_id", "Request", "attr"),
    Requirement("vllm.v1.request", "output_token_ids", "Request", "attr", why="response text at close"),
    Requirement("vllm.sampling_params", "extra_args", "SamplingParams", "attr", why="vllm_xargs policy"),
    Requirement("vllm.sampling_params", "eos_token_id", "SamplingParams", "attr", why="stop rule mirror"),
    Requirement("vllm.sampling_params", "stop_token_ids", "SamplingParams", "attr", why="stop rule mirror"),
    Requirement("vllm.sampling_params", "max_tokens", "SamplingParams", "attr", why="stop rule mirror"),
    Requirement("vllm.model_executor.models.interfaces", "supports_eagle3", kind="function", prefix=("model",)),
    Requirement(
        "vllm.model_executor.models.interfaces",
        "set_aux_hidden_state_layers",
        "SupportsEagle3",
        prefix=("layers",),
        why="the model returns the probe layers as auxiliary outputs",
    ),
    Requirement(
        "vllm.model_executor.models.llama",
        "set_aux_hidden_state_layers",
        "LlamaForCausalLM",
        prefix=("layers",),
        why="the reference architecture",
    ),
    Requirement("vllm.distributed", "get_pp_group", kind="function"),
    Requirement("vllm.distributed", "get_tensor_model_parallel_rank", kind="function"),
)


# -- source trees -------------------------------------------------------------------------------------------
class SourceTree:
    """vLLM's Python source, from an installed package folder or a wheel (read from the zip)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._zip = zipfile.ZipFile(self.root) if self.root.suffix == ".whl" else None
        self._names = set(self._zip.namelist()) if self._zip else None

    def __str__(self) -> str:
        return str(self.root)

    @classmethod
    def installed(cls) -> SourceTree | None:
        """The vLLM importable here (found without importing it), or None."""
        import importlib.util

        spec = importlib.util.find_spec("vllm")
        if spec is None or not spec.submodule_search_locations:
            return None
        return cls(Path(next(iter(spec.submodule_search_locations))).parent)

    def read(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for rel in (f"{base}.py", f"{base}/__init__.py"):
            if self._zip is not None:
                assert self._names is not None
                if rel in self._names:
                    return self._zip.read(rel).decode("utf-8")
            else:
                path = self.root / rel
                if path.is_file():
                    return path.read_text(encoding="utf-8")
        return None

    def has_module(self, module: str) -> bool:
        return self.read(module) is not None

    def is_package(self, module: str) -> bool:
        """True when `module` is a package (its source is `__init__.py`): relative imports start there."""
        rel = module.replace(".", "/") + "/__init__.py"
        if self._zip is not None:
            assert self._names is not None
            return rel in self._names
        return (self.root / rel).is_file()

    def version(self) -> str | None:
        """`vllm/_version.py`'s version (setuptools-scm writes it into every wheel)."""
        text = self.read("vllm._version")
        if text is None:
            return None
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id in ("__version__", "version") for t in targets):
                    return str(node.value.value)
        return None

    @lru_cache(maxsize=256)  # noqa: B019 - one tree per check run; the cache dies with it
    def parse(self, module: str) -> ast.Module | None:
        text = self.read(module)
        return None if text is None else ast.parse(text)


# -- the checker --------------------------------------------------------------------------------------------
def check(requirements: Iterable[Requirement], tree: SourceTree) -> ContractResult:
    reqs = list(requirements)
    result = ContractResult(str(tree), len(reqs))
    for req in reqs:
        problem = _problem(req, tree)
        if problem:
            result.violations.append(Violation(req, problem))
    return result


def _problem(req: Requirement, tree: SourceTree) -> str | None:
    mod = tree.parse(req.module)
    if mod is None:
        return "module not found"
    if req.kind == "module":
        return None
    if req.kind == "function":
        fn = _find_function(tree, req.module, req.name, set())
        if fn is None:
            return "function not found"
        return _signature_problem(fn, req, method=False)
    cls = _find_class(mod, req.cls)
    if cls is None:
        return f"class {req.cls} not found"
    if req.kind == "not_overridden":
        return "redefined in the class (a patch on its base would be bypassed)" if _defines(cls, req.name) else None
    chain = list(_class_chain(tree, req.module, cls, set()))
    if req.kind == "method":
        for node in chain:
            fn = _method(node, req.name)
            if fn is not None:
                return _signature_problem(fn, req, method=True)
        return "method not found (class and vLLM bases)"
    for node in chain:  # attr
        if _has_attr(node, req.name):
            return None
    return "attribute not found (never assigned on self, no field or property)"


def _find_class(mod: ast.Module, name: str) -> ast.ClassDef | None:
    for node in mod.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    return None


def _from_module(tree: SourceTree, module: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` in `module` names (relative imports resolved like Python:
    level 1 is the package itself for a package's `__init__`, else the module's parent package)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if tree.is_package(module) else module.split(".")[:-1]
    parts = package[: len(package) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _imports(tree: SourceTree, mod: ast.Module, module: str) -> dict[str, tuple[str, str]]:
    """Local name -> (module, name) for `from X import Y [as Z]` (relative imports resolved)."""
    out: dict[str, tuple[str, str]] = {}
    for node in ast.walk(mod):
        if isinstance(node, ast.ImportFrom):
            base = _from_module(tree, module, node)
            for alias in node.names:
                out[alias.asname or alias.name] = (base, alias.name)
    return out


def _find_function(tree: SourceTree, module: str, name: str, seen: set) -> ast.FunctionDef | None:
    if (module, name) in seen:
        return None
    seen.add((module, name))
    mod = tree.parse(module)
    if mod is None:
        return None
    for node in mod.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return node  # type: ignore[return-value]
    target = _imports(tree, mod, module).get(name)  # re-exported (e.g. vllm.distributed)
    if target is not None:
        return _find_function(tree, target[0], target[1], seen)
    for node in mod.body:  # `from .parallel_state import *`
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            found = _find_function(tree, _from_module(tree, module, node), name, seen)
            if found is not None:
                return found
    return None


def _class_chain(tree: SourceTree, module: str, cls: ast.ClassDef, seen: set) -> Iterable[ast.ClassDef]:
    """The class, then its bases that live in vLLM's source (depth first, imports followed)."""
    key = (module, cls.name)
    if key in seen:
        return
    seen.add(key)
    yield cls
    mod = tree.parse(module)
    assert mod is not None
    imports = _imports(tree, mod, module)
    for base in cls.bases:
        name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
        if name is None:
            continue
        local = _find_class(mod, name)
        if local is not None:
            yield from _class_chain(tree, module, local, seen)
            continue
        target = imports.get(name)
        if target is None or not target[0].startswith("vllm"):
            continue
        other = tree.parse(target[0])
        found = _find_class(other, target[1]) if other is not None else None
        if found is not None:
            yield from _class_chain(tree, target[0], found, seen)


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return node  # type: ignore[return-value]
    return None


def _defines(cls: ast.ClassDef, name: str) -> bool:
    if _method(cls, name) is not None:
        return True
    for node in cls.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def _has_attr(cls: ast.ClassDef, name: str) -> bool:
    if _defines(cls, name):  # field, class attribute, property or method
        return True
    for node in ast.walk(cls):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            for t in ast.walk(target):
                if (
                    isinstance(t, ast.Attribute)
                    and t.attr == name
                    and isinstance(t.value, ast.Name)
                    and t.value.id == "self"
                ):
                    return True
    return False


def _signature_problem(fn: ast.FunctionDef, req: Requirement, method: bool) -> str | None:
    args = fn.args
    positional = [a.arg for a in [*args.posonlyargs, *args.args]]
    if method and positional and positional[0] in ("self", "cls"):
        positional = positional[1:]
    if req.prefix and tuple(positional[: len(req.prefix)]) != req.prefix:
        return (
            f"signature starts ({', '.join(positional[: len(req.prefix)])}), the plugin needs ({', '.join(req.prefix)})"
        )
    names = set(positional) | {a.arg for a in args.kwonlyargs}
    missing = [p for p in req.params if p not in names]
    if missing and args.kwarg is None:
        return f"no parameter {', '.join(missing)}"
    return None


def check_all(tree: SourceTree) -> dict[str, ContractResult]:
    """The engine contract and each runner adapter's, for the runners this tree has.

    A runner whose anchor module is absent is skipped (that release does not ship it); one that is
    present must satisfy its adapter's whole contract, so a release that renames something fails.
    """
    from probewatch.server.client.vllm_plugin.adapters import ADAPTERS

    out = {"engine": check(ENGINE_CONTRACT, tree)}
    for adapter in ADAPTERS:
        if tree.has_module(adapter.module):
            out[adapter.name] = check(adapter.contract, tree)
    return out


# -- release wheels (make test-vllm-contract) ----------------------------------------------------------------
def wheel_cache() -> Path:
    """Where release wheels are kept between runs (outside any clone; `PROBEWATCH_VLLM_WHEELS` overrides)."""
    import os

    from probewatch import envs

    return Path(os.environ.get("PROBEWATCH_VLLM_WHEELS") or envs.home() / "cache" / "vllm-wheels")


def fetch_wheel(version: str, cache: Path, package: str = "vllm") -> Path:
    """The wheel of `package==version` (`latest`: the newest the registry serves), downloaded once.

    `pip download --no-deps`: only vLLM's own wheel (hundreds of MB, CUDA kernels included, never
    imported: its Python source is read from the zip).
    """
    import subprocess
    import sys

    cache.mkdir(parents=True, exist_ok=True)
    prefix = package.replace("-", "_")
    if version != "latest":
        found = sorted(cache.glob(f"{prefix}-{version}-*.whl"))
        if found:
            return found[0]
    spec = package if version == "latest" else f"{package}=={version}"
    before = set(cache.glob(f"{prefix}-*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(cache)]
    proc = subprocess.run([*cmd, spec], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download {spec} failed: {proc.stderr.strip().splitlines()[-1:]}")
    if version == "latest":
        # pip leaves an already-present newest wheel alone: the newest version in the cache is it
        new = set(cache.glob(f"{prefix}-*.whl")) - before
        candidates = new or set(cache.glob(f"{prefix}-*.whl"))
        return max(candidates, key=lambda p: _version_key(p.name.split("-")[1]))
    found = sorted(cache.glob(f"{prefix}-{version}-*.whl"))
    if not found:
        raise RuntimeError(f"pip download {spec} left no wheel in {cache}")
    return found[0]


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in version.replace("post", ".").split("."))


def extract_python(wheel: Path, dest: Path) -> Path:
    """The wheel's `vllm/**/*.py` under `dest` (importable with PYTHONPATH=dest; no compiled parts)."""
    marker = dest / ".extracted"
    if marker.is_file() and marker.read_text() == wheel.name:
        return dest
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith("vllm/") and name.endswith(".py"):
                zf.extract(name, dest)
    marker.write_text(wheel.name)
    return dest


__all__ = [
    "ENGINE_CONTRACT",
    "ContractResult",
    "Requirement",
    "SourceTree",
    "Violation",
    "check",
    "check_all",
    "extract_python",
    "fetch_wheel",
    "wheel_cache",
]
