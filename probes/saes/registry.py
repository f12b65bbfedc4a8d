"""Architecture name (cfg.json `architecture`) -> (SAE class, config class), as in SAELens.

Third-party architectures register with `register_sae_class`; the three built-ins are
registered in `probewatch.probes.saes.__init__`.
"""

from __future__ import annotations

from probewatch.probes.saes.config import SAEConfig
from probewatch.probes.saes.errors import UnknownSAEArchitectureError
from probewatch.probes.saes.sae import SAE

SAE_CLASS_REGISTRY: dict[str, tuple[type[SAE], type[SAEConfig]]] = {}

#: CLI / user-facing aliases (`--arch relu`) -> SAELens architecture names.
ARCHITECTURE_ALIASES = {"relu": "standard", "l1": "standard", "relu_l1": "standard", "jump_relu": "jumprelu"}


def register_sae_class(architecture: str, sae_class: type[SAE], config_class: type[SAEConfig]) -> None:
    if architecture in SAE_CLASS_REGISTRY:
        raise ValueError(f"SAE class for architecture {architecture!r} already registered")
    SAE_CLASS_REGISTRY[architecture] = (sae_class, config_class)


def canonical_architecture(name: str) -> str:
    return ARCHITECTURE_ALIASES.get(name, name)


def get_sae_class(architecture: str, source: str = "cfg.json") -> tuple[type[SAE], type[SAEConfig]]:
    try:
        return SAE_CLASS_REGISTRY[canonical_architecture(architecture)]
    except (KeyError, TypeError):
        raise UnknownSAEArchitectureError(
            f"{source}: unknown SAE architecture {architecture!r}; this runtime serves "
            f"{', '.join(sorted(SAE_CLASS_REGISTRY))}"
        ) from None
