"""Model provisioning (registry + fetch), loading and fingerprinting."""

from probewatch.models.fingerprint import fingerprint_folder, fingerprint_model
from probewatch.models.loading import LoadedModel, load_model, model_id_for, resolve_model_path
from probewatch.models.registry import REFERENCE_MODEL, REGISTRY, resolve_name

__all__ = [
    "REFERENCE_MODEL", "REGISTRY", "LoadedModel", "fingerprint_folder", "fingerprint_model",
    "load_model", "model_id_for", "resolve_model_path", "resolve_name",
]
