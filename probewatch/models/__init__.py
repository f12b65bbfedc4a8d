"""Model provisioning (registry + fetch), loading and fingerprinting.

Attributes resolve lazily so that `probewatch --help` (which reads the registry) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "REFERENCE_MODEL": "probewatch.models.registry",
    "REGISTRY": "probewatch.models.registry",
    "resolve_name": "probewatch.models.registry",
    "fingerprint_folder": "probewatch.models.fingerprint",
    "fingerprint_model": "probewatch.models.fingerprint",
    "LoadedModel": "probewatch.models.loading",
    "load_model": "probewatch.models.loading",
    "model_id_for": "probewatch.models.loading",
    "resolve_model_path": "probewatch.models.loading",
}

__all__ = list(_EXPORTS)  # built from the lazy-export table


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'probewatch.models' has no attribute {name!r}")
